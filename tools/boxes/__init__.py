"""Boxes: the one detection type and its readers (``detections``), and pictures drawn from them (``drawing``)."""

"""Benchmarks of vlm-agent's fast paths against the seed notebook's way of calling the model.

``python -m bench --config tiny|e2b|e4b`` prints a table and writes JSON; docs/performance.md
holds the latest results and how to reproduce them.
"""

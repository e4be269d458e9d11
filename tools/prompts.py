"""Task prompts, one function per family and task, pure and tested against exact strings."""

from __future__ import annotations

from collections.abc import Sequence

GEMMA4_OCR = (
    "Read all the text in this image, in reading order, in its original language and script. "
    "Keep the line breaks. Output only the text."
)


def gemma4_detect(labels: Sequence[str]) -> str:
    """The detection request the Gemma 4 guide uses ("detect person and car, output only ```json")."""
    names = list(labels)
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"detect {listed}, output only ```json"

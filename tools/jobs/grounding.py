"""Where on the image each extracted value was read: the family's own grounding, asked per value.

Each value (a string or a number) becomes a detection label, in the family's grounding
dialect: Gemma 4 answers with ``box_2d``, Qwen3-VL with ``bbox_2d``, PaliGemma with
``detect`` location tokens, all read into pixels of the original image by the family's parser.
Every value is asked of every image, all asks in one ``run_many`` (Gemma 4 decodes them as one
batch); a value's box is the first one found, in image order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..boxes.detections import Detection
from ..checks import MAX_LABEL_CHARS
from ..inputs import LoadedImage
from ..model import Model
from ..options import GenerationOptions
from ..tasks import Ask

#: values located in one call
MAX_LOCATED = 32
#: detect asks in one call (values times images)
MAX_ASKS = 64
#: a box and its label need few tokens
GROUNDING_TOKENS = 64


@dataclass(frozen=True)
class Found:
    """A value's box: on which image, and the detection the family read."""

    image: int
    detection: Detection


def label_for(value: Any, plain: Callable[[str], str]) -> str | None:
    """A value as a detection label: one line, at most ``MAX_LABEL_CHARS``, no ``;`` (PaliGemma's separator);
    None for what cannot be looked for (booleans, null, empty text)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = " ".join(str(value).replace(";", ",").split())
    text = "".join(char for char in text if char.isprintable())[:MAX_LABEL_CHARS].strip()
    return plain(text) or None


def locate(
    model: Model, images: Sequence[LoadedImage], labels: Sequence[str], budget: int | None, options: GenerationOptions
) -> list[Found | None]:
    """Each label's first box, looking in every image; None where no image gave one."""
    short = replace(options, max_new_tokens=min(options.max_new_tokens, GROUNDING_TOKENS), min_new_tokens=None)
    asks = [Ask("detect", (image.input,), labels=(label,), budget=budget) for label in labels for image in images]
    answers = model.run_many(asks, short) if asks else []
    found: list[Found | None] = []
    for n in range(len(labels)):
        hit = None
        for i in range(len(images)):
            parsed = answers[n * len(images) + i].detections
            if parsed is not None and parsed.detections:
                hit = Found(i, parsed.detections[0])
                break
        found.append(hit)
    return found

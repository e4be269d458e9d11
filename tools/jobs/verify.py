"""Crop-and-verify: each detected box's crop is asked whether it shows its label, at a high budget.

A detector at a low budget (or a box fused from several) can be wrong about what is in the box;
looking again at the crop alone, enlarged, is a cheap second opinion. All crops of one label go
to the model as one batch (``Model.run_many``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from PIL import Image

from ..core import Core
from ..boxes.detections import Detection
from ..inputs import ImageInput
from ..model import Model
from ..options import GenerationOptions
from ..results import DetectResult
from ..tasks import Ask, Generation

#: crops are read at Gemma 4's highest budget
VERIFY_BUDGET = 1120
#: context around each box, as a fraction of its side, so that the object is not cut at the crop's edge
MARGIN = 0.1
#: a yes or no needs few tokens; a model that says more is read by its first word
VERIFY_TOKENS = 8
_FIRST_WORD = re.compile(r"[a-z]+")
#: what a crop's answer may be where the runtime can hold the model to a schema (an engine):
#: the JSON string "yes" or "no", which ``answer`` reads like the bare word
YES_NO: dict[str, Any] = {"type": "string", "enum": ["yes", "no"]}


def question(label: str) -> str:
    return f"Is there a {label} in this image? Answer yes or no."


def answer(text: str) -> bool | None:
    """True for yes, False for no, None for anything else (the box is then unverified, not refuted)."""
    word = _FIRST_WORD.search(text.lower())
    if word is None:
        return None
    return {"yes": True, "no": False}.get(word.group(0))


def crop(image: Image.Image, box: Sequence[int]) -> Image.Image:
    x1, y1, x2, y2 = box
    dx, dy = round((x2 - x1) * MARGIN), round((y2 - y1) * MARGIN)
    area = (max(0, x1 - dx), max(0, y1 - dy), min(image.width, x2 + dx), min(image.height, y2 + dy))
    return image.crop(area)


def verify(
    model: Model, image: Image.Image, detections: Sequence[Detection], options: GenerationOptions
) -> tuple[list[bool | None], list[Generation]]:
    """Each detection's verdict, in order, and every generation that decided one."""
    budget = VERIFY_BUDGET if model.capabilities.budgets else None
    short = replace(options, max_new_tokens=min(options.max_new_tokens, VERIFY_TOKENS))
    verdicts: list[bool | None] = [None] * len(detections)
    generations: list[Generation] = []
    by_label: dict[str, list[int]] = {}
    for i, detection in enumerate(detections):
        by_label.setdefault(detection.label, []).append(i)
    for label, indices in by_label.items():
        options.check_cancelled()
        asks = [
            Ask(
                "describe", (ImageInput.from_pixels(crop(image, detections[i].box)),), question(label), budget=budget,
                answer_schema=YES_NO,
            )
            for i in indices
        ]
        for i, result in zip(indices, model.run_many(asks, short)):
            verdicts[i] = answer(result.generation.text)
            generations.append(result.generation)
    return verdicts, generations


def verified(core: Core, result: DetectResult, options: GenerationOptions | None) -> DetectResult:
    """``result`` with each box's crop asked whether it shows the label, all in one batch per label."""
    if not result.detections:
        return result
    options = options or GenerationOptions()
    picture = core.loader.load(result.image_ids[0]).image
    with core.turn(options) as model:
        verdicts, generations = verify(model, picture, result.detections, options)
    result.detections = [replace(d, verified=verdict) for d, verdict in zip(result.detections, verdicts)]
    yes, no = verdicts.count(True), verdicts.count(False)
    budget = generations[0].budget if generations else None
    at = f" at budget {budget}" if budget is not None else ""
    result.notes.append(
        f"verify: asked about {len(verdicts)} crops{at}: {yes} yes, {no} no, {len(verdicts) - yes - no} unclear"
    )
    return result

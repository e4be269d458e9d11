"""Consensus detection: one image at several budgets in one batch, their boxes fused into one set.

``detect`` runs the budgets and fuses; ``fused_boxes`` says which budgets found each box.
Fusion is weighted box fusion (Solovyev et al., 2019): one box per object the runs agree on.

The ``ensemble-boxes`` package implements it over numpy, pandas and numba; this is the same
algorithm for the few dozen boxes a vision-language model gives, in plain Python. Language
models give no box scores, so every box counts 1 and runs are weighted equally unless told:

1. all boxes, the most trusted run first (highest weight, then the order given), are taken
   one by one; a box joins the first fused box of the same label (ignoring case) it overlaps
   with IoU >= ``iou_threshold``, at most one box per run, else it starts a fused box of its own;
2. a fused box is the weight-averaged corners of its members, recomputed as each joins;
3. its agreement is the weight of the runs that found it over the weight of all runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core import Core, save_annotated
from ..boxes.detections import Agreement, Detection, from_pixel_box, iou
from ..options import GenerationOptions
from ..results import DetectResult
from ..tasks import Ask, combine

#: WBF's usual threshold for joining a cluster
FUSION_IOU = 0.55

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class RunBox:
    run: int
    label: str
    box: Box


@dataclass
class Fused:
    label: str
    box: Box
    #: the runs (indices) whose boxes joined, in joining order, and those boxes' IoU with the fused box
    runs: list[int] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    #: the joined boxes, for the IoUs and the averages
    members: list[Box] = field(default_factory=list)
    #: weight of the runs that found it over the weight of all runs, 0..1
    agreement: float = 0.0


def fuse(
    boxes: Sequence[RunBox], runs: int, weights: Sequence[float] | None = None, iou_threshold: float = FUSION_IOU
) -> list[Fused]:
    """Fused boxes, most agreed first (ties: in the order they were started)."""
    weights = list(weights) if weights is not None else [1.0] * runs
    if len(weights) != runs or any(w <= 0 for w in weights):
        raise ValueError("one positive weight per run")
    order = sorted(range(len(boxes)), key=lambda i: (-weights[boxes[i].run], boxes[i].run, i))
    fused: list[Fused] = []
    for i in order:
        item = boxes[i]
        best, best_iou = None, iou_threshold
        for candidate in fused:
            if candidate.label.casefold() != item.label.casefold() or item.run in candidate.runs:
                continue
            overlap = iou(candidate.box, item.box)
            if overlap >= best_iou:
                best, best_iou = candidate, overlap
        if best is None:
            best = Fused(item.label, item.box)
            fused.append(best)
        best.runs.append(item.run)
        best.members.append(item.box)
        total = sum(weights[r] for r in best.runs)
        best.box = tuple(  # type: ignore[assignment]
            sum(weights[r] * m[k] for r, m in zip(best.runs, best.members)) / total for k in range(4)
        )
    all_weight = sum(weights)
    for f in fused:
        f.ious = [round(iou(m, f.box), 4) for m in f.members]
        f.agreement = round(sum(weights[r] for r in f.runs) / all_weight, 4)
    return sorted(fused, key=lambda f: -f.agreement)


# ---------------------------------------------------------------- consensus detection


def fused_boxes(budgets: Sequence[int], boxes: Sequence[Sequence[Detection]], size: tuple[int, int]) -> list[Detection]:
    """The boxes each budget found, fused (weighted box fusion); each says which budgets found it."""
    found = [
        RunBox(n, d.label, tuple(float(v) for v in d.box))  # type: ignore[arg-type]
        for n, run in enumerate(boxes) for d in run
    ]
    out = []
    for fused in fuse(found, len(budgets)):
        found_by = [budgets[n] for n in fused.runs]
        box = from_pixel_box(fused.label, fused.box, size, f"fused from budgets {found_by}")
        out.append(replace(box, agreement=Agreement(tuple(found_by), tuple(fused.ious), fused.agreement)))
    return out


def detect(
    core: Core,
    image: str,
    labels: list[str],
    budgets: list[int],
    options: GenerationOptions,
    annotated_path: str | Path | None,
) -> DetectResult:
    """The budgets (checked against the model's) in one batch (Gemma 4), their boxes fused; each box
    says which budgets found it."""
    started = time.perf_counter()
    loaded = core.load_images([image])
    picture = loaded[0].image
    ask = Ask("detect", (loaded[0].input,), labels=tuple(labels))
    with core.turn(options) as model:
        answers = model.run_budgets(ask, budgets, options)
    runs = [(answer.generation, answer.detections) for answer in answers]
    fused = fused_boxes(budgets, [parsed.detections if parsed else [] for _, parsed in runs], picture.size)
    generation = combine(
        [g for g, _ in runs], "\n".join(f"budget {b}: {g.text}" for b, (g, _) in zip(budgets, runs)),
        max(budgets), [f"budget {b}" for b in budgets],
    )
    generation.notes.extend(
        f"budget {b}: dropped {reason}" for b, (_, p) in zip(budgets, runs) for reason in (p.dropped if p else [])
    )
    written = save_annotated(picture, fused, annotated_path, generation.notes)
    return core.result(
        DetectResult, generation, loaded, started,
        labels=labels, image_size=list(picture.size), detections=fused, annotated_path=written, consensus=budgets,
    )

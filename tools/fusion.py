"""Weighted box fusion (Solovyev et al., 2019) of the boxes several runs found: one box per object they agree on.

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

from collections.abc import Sequence
from dataclasses import dataclass, field

from .detections import iou

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

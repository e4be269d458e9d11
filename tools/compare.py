"""How far an output at one visual-token budget agrees with the output at another.

Each task has one metric in 0..1 (1 = same answer) and a threshold above which two
outputs count as agreeing; the recommendation is the smallest budget that agrees with
the highest one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from .detections import Detection, match_f1


@dataclass(frozen=True)
class Metric:
    name: str
    threshold: float
    description: str


METRICS: dict[str, Metric] = {
    "detect": Metric("box_f1", 0.8, "F1 of boxes matched one-to-one at IoU >= 0.5 with the same label"),
    "ocr": Metric("1-cer", 0.95, "1 minus the character error rate (edit distance / reference length)"),
    "describe": Metric("text_similarity", 0.6, "word-sequence similarity ratio (difflib)"),
}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, two rows at a time."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def char_agreement(text: str, reference: str) -> float:
    """1 - CER of ``text`` against ``reference``, floored at 0."""
    if not reference:
        return 1.0 if not text else 0.0
    return max(0.0, 1.0 - edit_distance(text, reference) / len(reference))


def text_similarity(text: str, reference: str) -> float:
    a, b = text.lower().split(), reference.lower().split()
    if not a and not b:
        return 1.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def agreement(task: str, text: str, reference: str, boxes: Sequence[Detection] = (), ref_boxes: Sequence[Detection] = ()) -> float:
    if task == "detect":
        return round(match_f1(list(boxes), list(ref_boxes)), 4)
    if task == "ocr":
        return round(char_agreement(text, reference), 4)
    return round(text_similarity(text, reference), 4)


def recommend(budgets: Sequence[int], agreements: Sequence[float], threshold: float) -> int:
    """The smallest budget whose agreement reaches ``threshold`` (the highest always does)."""
    for budget, score in sorted(zip(budgets, agreements)):
        if score >= threshold:
            return budget
    return max(budgets)


#: per-run timings a comparison can show, most telling first, and how a title names each
TIMING_NAMES = {"total_ms": "", "preprocess_ms": "encode", "prefill_ms": "prefill", "decode_ms": "decode"}


def varying_timings(timings: Sequence[dict[str, float | None]]) -> list[str]:
    """The timing keys whose values differ between the runs, in ``TIMING_NAMES`` order.

    A time every budget shares (the decode of one batch) says nothing per budget. Times
    within 1 ms or 2 % of each other count as equal; a time an engine does not report
    (null) is left out.
    """
    keys = [key for key in TIMING_NAMES if all(t.get(key) is not None for t in timings)]
    varying = []
    for key in keys:
        values = [float(t[key]) for t in timings]  # type: ignore[arg-type]
        if values and max(values) - min(values) > max(1.0, 0.02 * max(values)):
            varying.append(key)
    return varying


def run_label(budget: int, image_tokens: int | None, timings: dict[str, float | None], shown: Sequence[str]) -> str:
    """A budget's title: 'budget 280 · 256 image tokens · 1.23 s' (times only where they differ)."""
    parts = [f"budget {budget}"]
    if image_tokens is not None:
        parts.append(f"{image_tokens} image tokens")
    for key in shown[:1]:
        name = TIMING_NAMES[key]
        parts.append(f"{name} {float(timings[key] or 0) / 1000:.2f} s".strip())
    return " · ".join(parts)

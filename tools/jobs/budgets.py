"""compare_budgets: one image and prompt at several visual-token budgets, side by side.

Each task has one metric in 0..1 (1 = same answer) and a threshold above which two
outputs count as agreeing; every run is scored against the highest budget, and the
recommendation is the smallest budget that agrees with it (and keeps what budget 'auto'
would). ``compare`` runs it; the panels of one picture show what each budget saw or found.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from pathlib import Path

from PIL import Image

from ..checks import check_labels, check_text, two_budgets
from ..core import Core, save_picture
from ..boxes.detections import Detection, match_f1
from ..boxes.drawing import annotate, grid
from ..errors import InvalidRequest, Unsupported
from ..inputs import LoadedImage
from ..model import Model
from ..options import GenerationOptions
from ..results import BudgetRun, BudgetTimings, CompareResult, DescribeResult, DetectResult, OcrResult, Result
from ..runtimes.streaming import streaming
from ..tasks import Answer, Ask, Progress
from . import auto_budget
from .consensus import fused_boxes

#: long side of each panel of a comparison picture
PANEL_SIDE = 768


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


# ---------------------------------------------------------------- the comparison


def check_budgets(model: Model, budgets: Sequence[int], param: str = "budgets") -> list[int]:
    """``budgets`` sorted, two or more, each one the model has; ``param`` names the argument they came in."""
    if not model.capabilities.budgets:
        raise model.no_budgets_error()
    chosen = two_budgets(budgets, param)
    for budget in chosen:
        model.check_budget(budget, param)
    return chosen


def compare(
    core: Core,
    image: str,
    task: str,
    prompt: str,
    labels: Sequence[str],
    budgets: Sequence[int] | None,
    options: GenerationOptions,
    picture_path: str | Path | None,
    progress: Progress | None,
) -> CompareResult:
    """Run one task at several budgets (None: all the model's); each run is scored against the highest.

    The backend may run the budgets as one batch (Gemma 4 does): each run then reports its own encoding
    and prefill and the batch's shared decode (``BudgetTimings``).
    """
    started = time.perf_counter()
    if task not in METRICS:
        raise InvalidRequest(f"Task {task!r} cannot be compared; use describe, ocr or detect.", param="task")
    model = core.model
    chosen = check_budgets(model, model.capabilities.budgets if budgets is None else budgets)
    prompt = core.plain(check_text(prompt, "The prompt", "prompt").strip())
    if task == "detect":
        # A detection prompt may carry its labels: "person, car".
        labels = [core.plain(x) for x in check_labels(labels or [part for part in prompt.split(",") if part.strip()])]
    loaded = core.load_images([image])[0]
    ask = Ask(task, (loaded.input,), prompt, labels=tuple(labels))  # type: ignore[arg-type]
    model.check(replace(ask, budget=chosen[0]))
    # Several runs' text interleaved in one stream would make no sense to a reader.
    with streaming(None):
        if model.concurrent:
            answers = run_concurrently(model, ask, chosen, options, progress)
        else:
            with core.turn(options) as held:
                answers = held.run_budgets(ask, chosen, options, progress)
    results = [
        core.result(OcrResult if task == "ocr" else DescribeResult, answer.generation, [loaded], None)
        if answer.detections is None
        else core.boxes_result(DetectResult, answer, [loaded], None, list(labels))
        for answer in answers
    ]
    if progress:
        progress(len(chosen), len(chosen), "done")
    check_budgets_applied(chosen, results)
    metric = METRICS[task]
    reference = results[-1]
    boxes = [r.detections if isinstance(r, DetectResult) else [] for r in results]
    runs = [
        BudgetRun(
            budget=budget,
            image_tokens=r.image_tokens,
            seen_size=list(model.seen_size(loaded.size, budget)),
            prompt_tokens=r.prompt_tokens,
            generated_tokens=r.generated_tokens,
            finish_reason=r.finish_reason,
            text=r.text,
            detections=r.detections if isinstance(r, DetectResult) else None,
            agreement=agreement(task, r.text, reference.text, boxes[i], boxes[-1]),
            # a batched backend's per-row split comes through; an engine's plain timings leave it null
            timings=BudgetTimings.model_validate(r.timings, from_attributes=True),
            cache=r.cache,
        )
        for i, (budget, r) in enumerate(zip(chosen, results))
    ]
    recommended, why = recommendation(model, task, loaded.size, chosen, [r.agreement for r in runs], metric.threshold)
    fused = fused_boxes(chosen, boxes, loaded.size) if task == "detect" else None
    written = None
    picture_notes: list[str] = []
    if picture_path is not None:
        written = save_picture(picture(loaded, runs, boxes, fused), picture_path, picture_notes)
    return CompareResult(
        task=task,
        model=model.model_id,
        family=model.family,
        image_ids=[loaded.image_id],
        image_size=list(loaded.size),
        prompt=prompt,
        labels=list(labels),
        reference_budget=chosen[-1],
        metric=metric.name,
        metric_description=metric.description,
        threshold=metric.threshold,
        recommended_budget=recommended,
        recommendation_reason=why,
        fused=fused,
        runs=runs,
        picture_path=written,
        total_ms=round((time.perf_counter() - started) * 1000, 2),
        notes=[f"budget {b}: {note}" for b, r in zip(chosen, results) for note in r.notes] + picture_notes,
    )


def recommendation(
    model: Model, task: str, size: tuple[int, int], budgets: list[int], agreements: list[float], threshold: float
) -> tuple[int, str]:
    """The smallest budget that agrees with the highest and is not below what budget 'auto' would pick."""
    agreeing = recommend(budgets, agreements, threshold)
    if auto_budget.needed_scale(task, size) is None:
        return agreeing, f"the smallest budget whose agreement reaches {threshold}"
    caps = model.capabilities
    floor, reason = auto_budget.choose(task, size, budgets, caps.default_budget or max(budgets), model.seen_size)
    if floor <= agreeing:
        return agreeing, f"the smallest budget whose agreement reaches {threshold}; budget 'auto' would pick {floor}"
    return floor, f"agreement reaches {threshold} at {agreeing}, but {reason}"


def run_concurrently(
    model: Model, ask: Ask, budgets: list[int], options: GenerationOptions, progress: Progress | None
) -> list[Answer]:
    """The budgets' runs all at once, up to the runtime's concurrency, for an engine that batches them."""
    if progress:
        progress(0, len(budgets), f"budgets {', '.join(map(str, budgets))}, sent together")
    done: dict[int, Answer] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(model.max_concurrency, len(budgets)))) as pool:
        futures = {pool.submit(model.run, replace(ask, budget=budget), options): budget for budget in budgets}
        # Progress is reported from this thread: the MCP server's callback must be called
        # from the worker thread it gave this call, not from the pool's.
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            if progress and len(done) < len(budgets):
                progress(len(done), len(budgets), f"budget {futures[future]} done")
    return [done[budget] for budget in budgets]


def check_budgets_applied(budgets: list[int], results: list[Result]) -> None:
    """Refuse a comparison whose runs all had the same prompt length: the engine ignored the budget.

    Only where image tokens are unknown: a local model's counts are the truth. Gemma 4's image
    tokens differ at every budget, so equal prompt lengths cannot come from applied budgets.
    """
    if any(r.image_tokens is not None for r in results):
        return
    counts = {r.prompt_tokens for r in results}
    if len(counts) == 1 and 0 not in counts:
        raise Unsupported(
            f"The engine gave the same prompt length ({counts.pop()} tokens) at budgets "
            f"{', '.join(map(str, budgets))}, so it ignored the budget and the runs cannot be compared; "
            "check that it serves Gemma 4 and takes per-request mm_processor_kwargs."
        )


# ---------------------------------------------------------------- the picture


def picture(
    loaded: LoadedImage, runs: list[BudgetRun], boxes: list[list[Detection]], fused: list[Detection] | None
) -> Image.Image:
    """One panel a budget (and the fused boxes of a detect), each titled with its budget, tokens and time."""
    shown = varying_timings([run.timings.model_dump() for run in runs])
    panels = [(panel_title(run, shown), panel(loaded.image, run, b)) for run, b in zip(runs, boxes)]
    if fused is not None:
        panels.append(("fused (weighted box fusion)", annotate(loaded.image, fused)))
    return grid(panels)


def panel(picture: Image.Image, run: BudgetRun, boxes: list[Detection]) -> Image.Image:
    """Detections drawn on the original; otherwise the detail the encoder saw, shown at one size."""
    if run.detections is not None:
        return annotate(picture, boxes)
    seen = picture.resize(tuple(run.seen_size), Image.Resampling.BICUBIC)
    scale = min(1.0, PANEL_SIDE / max(picture.size))
    shown = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return seen.resize(shown, Image.Resampling.NEAREST)


def panel_title(run: BudgetRun, shown_timings: Sequence[str] = ()) -> str:
    return run_label(run.budget, run.image_tokens, run.timings.model_dump(), shown_timings)

"""The vision core's front door: image references and plain values in, structured results out.

``Vision`` resolves image references through the access policy, validates every
parameter, runs the backend one request at a time, and builds the results that the
CLI prints and the MCP server returns. Adapters stay thin: they only translate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .backends.base import Backend, Generation, Progress, Turn
from . import compare
from .detections import Detection, ParsedDetections
from .drawing import annotate, grid, save_png
from .errors import InvalidRequest, Unsupported
from .images import ImageLoader, LoadedImage
from .options import GenerationOptions
from .results import (
    BoxesResult,
    BudgetRun,
    ChatResult,
    CompareResult,
    DescribeResult,
    DetectionOut,
    DetectResult,
    OcrResult,
    Result,
    SegmentResult,
    ToolCallOut,
)

MAX_PROMPT_CHARS = 32_000
MAX_IMAGES = 16
MAX_LABELS = 20
MAX_LABEL_CHARS = 100
MAX_HISTORY_TURNS = 64

#: long side of each panel of a comparison picture
PANEL_SIDE = 768


def check_text(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidRequest(f"{what} must be text.")
    if "\x00" in text:
        raise InvalidRequest(f"{what} contains a NUL byte; remove it and send the text again.")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"{what} is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}.")
    return text


def check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        labels = [labels]
    cleaned = [check_text(label, "A label").strip() for label in labels]
    if not cleaned or not all(cleaned):
        raise InvalidRequest("Give at least one non-empty label to detect, for example 'person'.")
    if len(cleaned) > MAX_LABELS:
        raise InvalidRequest(f"{len(cleaned)} labels given; detect at most {MAX_LABELS} at once.")
    for label in cleaned:
        if len(label) > MAX_LABEL_CHARS or "\n" in label:
            raise InvalidRequest(f"Labels must be one line of at most {MAX_LABEL_CHARS} characters.")
    return list(dict.fromkeys(cleaned))


def detection_out(detection: Detection) -> DetectionOut:
    return DetectionOut(
        label=detection.label,
        box=list(detection.box),
        box_normalized=list(detection.box_normalized),
        raw=detection.raw,
        seg_codes=list(detection.seg_codes),
    )


class Vision:
    """One resident backend behind validated, one-at-a-time operations."""

    def __init__(self, backend: Backend, loader: ImageLoader) -> None:
        self.backend = backend
        self.loader = loader
        # One request on the model at a time: generate() is not re-entrant.
        self._lock = threading.Lock()

    # -- inputs -----------------------------------------------------------------

    def load_images(self, refs: Sequence[str], *, at_least: int = 1) -> list[LoadedImage]:
        if isinstance(refs, str):
            refs = [refs]
        if len(refs) < at_least:
            raise InvalidRequest("Give at least one image: a path, an http(s) URL, a data: URI or an image_id.")
        if len(refs) > MAX_IMAGES:
            raise InvalidRequest(f"{len(refs)} images given; send at most {MAX_IMAGES} in one call.")
        return [self.loader.load(ref) for ref in refs]

    def parse_history(self, history: Sequence[Mapping[str, Any] | Turn]) -> list[Turn]:
        """Prior turns from plain dicts: ``{"role", "content", "images"}``."""
        if len(history) > MAX_HISTORY_TURNS:
            raise InvalidRequest(f"History has {len(history)} turns; send at most {MAX_HISTORY_TURNS}.")
        turns: list[Turn] = []
        for n, entry in enumerate(history, start=1):
            if isinstance(entry, Turn):
                turns.append(entry)
                continue
            if not isinstance(entry, Mapping):
                raise InvalidRequest(f"History entry {n} must be an object with 'role' and 'content'.")
            role = entry.get("role")
            if role not in ("user", "assistant"):
                raise InvalidRequest(f"History entry {n} has role {role!r}; use 'user' or 'assistant'.")
            text = check_text(entry.get("content", ""), f"History entry {n}")
            refs = entry.get("images") or []
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise InvalidRequest(f"History entry {n} has 'images' that is not a list of image strings.")
            images = tuple(loaded.image for loaded in self.load_images(refs, at_least=0))
            turns.append(Turn(role=role, text=text, images=images))
        if sum(len(t.images) for t in turns) > MAX_IMAGES:
            raise InvalidRequest(f"History holds more than {MAX_IMAGES} images; drop older turns.")
        return turns

    # -- operations -------------------------------------------------------------

    def _result(
        self, cls: type[Result], generation: Generation, images: list[LoadedImage], started: float | None, **extra: Any
    ) -> Any:
        """The result of one generation; ``started`` (the call's start) makes ``total_ms`` count image loading too."""
        timings = generation.timings
        if started is not None:
            timings = timings.model_copy(update={"total_ms": round((time.perf_counter() - started) * 1000, 2)})
        return cls(
            text=generation.text,
            model=self.backend.model_id,
            family=self.backend.family,
            budget=generation.budget,
            image_ids=[loaded.image_id for loaded in images],
            image_tokens=generation.image_tokens,
            prompt_tokens=generation.prompt_tokens,
            generated_tokens=generation.generated_tokens,
            finish_reason=generation.finish_reason,
            history_turns=generation.history_turns,
            timings=timings,
            notes=generation.notes,
            cache=generation.cache,
            **extra,
        )

    def describe(
        self,
        images: Sequence[str],
        prompt: str = "",
        history: Sequence[Mapping[str, Any] | Turn] = (),
        budget: int | None = None,
        options: GenerationOptions | None = None,
    ) -> DescribeResult:
        started = time.perf_counter()
        prompt = check_text(prompt, "The prompt").strip()
        turns = self.parse_history(history)
        loaded = self.load_images(images, at_least=0 if turns else 1)
        # An empty prompt stays empty: each family asks for a caption its own way.
        with self._lock:
            generation = self.backend.describe(
                [image.image for image in loaded], prompt, turns, budget, options or GenerationOptions()
            )
        return self._result(DescribeResult, generation, loaded, started)

    def chat(
        self,
        images: Sequence[str],
        prompt: str,
        history: Sequence[Mapping[str, Any] | Turn] = (),
        budget: int | None = None,
        options: GenerationOptions | None = None,
    ) -> ChatResult:
        """One assistant turn that answers in text or picks vision tools to call (Gemma 4)."""
        started = time.perf_counter()
        prompt = check_text(prompt, "The message").strip()
        if not prompt:
            raise InvalidRequest("The message is empty; say what you want to know about the images.")
        turns = self.parse_history(history)
        loaded = self.load_images(images, at_least=0)
        with self._lock:
            generation, reply = self.backend.chat(
                [image.image for image in loaded], prompt, turns, budget, options or GenerationOptions()
            )
        generation.text = reply.text
        generation.notes.extend(f"ignored {reason}" for reason in reply.invalid)
        calls = [ToolCallOut(name=call.name, arguments=call.arguments) for call in reply.calls]
        return self._result(ChatResult, generation, loaded, started, tool_calls=calls)

    def ocr(self, image: str, budget: int | None = None, options: GenerationOptions | None = None) -> OcrResult:
        started = time.perf_counter()
        loaded = self.load_images([image])
        with self._lock:
            generation = self.backend.ocr(loaded[0].image, budget, options or GenerationOptions())
        return self._result(OcrResult, generation, loaded, started)

    def detect(
        self,
        image: str,
        labels: Sequence[str],
        budget: int | None = None,
        options: GenerationOptions | None = None,
        annotated_path: str | Path | None = None,
    ) -> DetectResult:
        """Boxes for ``labels``; with ``annotated_path``, also writes the annotated PNG there."""
        labels = check_labels(labels)
        return self._boxes(
            DetectResult, image, labels, annotated_path,
            lambda picture: self.backend.detect(picture, labels, budget, options or GenerationOptions()),
        )

    def segment(
        self,
        image: str,
        label: str,
        budget: int | None = None,
        options: GenerationOptions | None = None,
        annotated_path: str | Path | None = None,
    ) -> SegmentResult:
        """The box and mask codes of ``label`` (families that segment); ``annotated_path`` as for detect."""
        labels = check_labels([label])
        return self._boxes(
            SegmentResult, image, labels, annotated_path,
            lambda picture: self.backend.segment(picture, labels[0], budget, options or GenerationOptions()),
        )

    def _boxes(
        self,
        cls: type[BoxesResult],
        image: str,
        labels: list[str],
        annotated_path: str | Path | None,
        run: Callable[[Image.Image], tuple[Generation, ParsedDetections]],
    ) -> Any:
        started = time.perf_counter()
        loaded = self.load_images([image])
        picture = loaded[0].image
        with self._lock:
            generation, parsed = run(picture)
        written = None
        if annotated_path is not None:
            written = str(save_png(annotate(picture, parsed.detections), annotated_path))
        return self._boxes_result(cls, generation, parsed, loaded, started, labels, written)

    def _boxes_result(
        self,
        cls: type[BoxesResult],
        generation: Generation,
        parsed: ParsedDetections,
        loaded: list[LoadedImage],
        started: float | None,
        labels: list[str],
        annotated_path: str | None = None,
    ) -> Any:
        generation.notes.extend(f"dropped {reason}" for reason in parsed.dropped)
        return self._result(
            cls,
            generation,
            loaded,
            started,
            labels=labels,
            image_size=list(loaded[0].size),
            detections=[detection_out(d) for d in parsed.detections],
            annotated_path=annotated_path,
        )

    def model_info(self) -> dict[str, Any]:
        """What a client needs to know of the resident model to plan its requests."""
        backend = self.backend
        return {
            "model": backend.model_id,
            "family": backend.family,
            "display_name": backend.display_name,
            "budgets": list(backend.budgets),
            "default_budget": backend.default_budget,
            "context_window": getattr(backend, "max_positions", None),
            "chat": type(backend).chat is not Backend.chat,
            "detect": type(backend).detect is not Backend.detect,
            "max_images": MAX_IMAGES,
            "max_history_turns": MAX_HISTORY_TURNS,
        }

    def check_budgets(self, budgets: Sequence[int]) -> list[int]:
        allowed = self.backend.budgets
        if not allowed:
            raise Unsupported(
                f"{self.backend.display_name} has a fixed resolution, so there are no budgets to compare; "
                "use a Gemma 4 model."
            )
        chosen = sorted(set(budgets))
        if len(chosen) < 2:
            raise InvalidRequest("Give at least two different budgets to compare, for example [70, 280, 1120].")
        bad = [b for b in chosen if b not in allowed]
        if bad:
            choices = " / ".join(map(str, allowed))
            raise InvalidRequest(f"Budget {bad[0]} is not available for {self.backend.display_name}; use {choices}.")
        return chosen

    def compare_budgets(
        self,
        image: str,
        task: str = "describe",
        prompt: str = "",
        labels: Sequence[str] = (),
        budgets: Sequence[int] = (70, 140, 280, 560, 1120),
        options: GenerationOptions | None = None,
        picture_path: str | Path | None = None,
        progress: Progress | None = None,
    ) -> CompareResult:
        """Run one task at several budgets; each run is scored against the highest budget.

        The backend may run the budgets as one batch (Gemma 4 does): each run then reports the batch's timings.
        """
        started = time.perf_counter()
        if task not in compare.METRICS:
            raise InvalidRequest(f"Task {task!r} cannot be compared; use describe, ocr or detect.")
        chosen = self.check_budgets(budgets)
        prompt = check_text(prompt, "The prompt").strip()
        if task == "detect":
            # A detection prompt may carry its labels: "person, car".
            labels = check_labels(labels or [part for part in prompt.split(",") if part.strip()])
        loaded = self.load_images([image])[0]
        with self._lock:
            runs_at = self.backend.at_budgets(
                task, loaded.image, prompt, labels, chosen, options or GenerationOptions(), progress
            )
        results: list[Result] = [
            self._result(OcrResult if task == "ocr" else DescribeResult, generation, [loaded], None)
            if parsed is None
            else self._boxes_result(DetectResult, generation, parsed, [loaded], None, list(labels))
            for generation, parsed in runs_at
        ]
        if progress:
            progress(len(chosen), len(chosen), "done")
        metric = compare.METRICS[task]
        reference = results[-1]
        boxes = [parsed_boxes(r) for r in results]
        runs = [
            BudgetRun(
                budget=budget,
                image_tokens=r.image_tokens,
                seen_size=list(self.backend.seen_size(loaded.size, budget)),
                prompt_tokens=r.prompt_tokens,
                generated_tokens=r.generated_tokens,
                finish_reason=r.finish_reason,
                text=r.text,
                detections=r.detections if isinstance(r, DetectResult) else None,
                agreement=compare.agreement(task, r.text, reference.text, boxes[i], boxes[-1]),
                timings=r.timings,
                cache=r.cache,
            )
            for i, (budget, r) in enumerate(zip(chosen, results))
        ]
        written = None
        if picture_path is not None:
            panels = [
                (f"max_soft_tokens = {run.budget}: {run.image_tokens} tokens", self.panel(loaded.image, run, b))
                for run, b in zip(runs, boxes)
            ]
            written = str(save_png(grid(panels), picture_path))
        return CompareResult(
            task=task,
            model=self.backend.model_id,
            family=self.backend.family,
            image_ids=[loaded.image_id],
            image_size=list(loaded.size),
            prompt=prompt,
            labels=list(labels),
            reference_budget=chosen[-1],
            metric=metric.name,
            metric_description=metric.description,
            threshold=metric.threshold,
            recommended_budget=compare.recommend(chosen, [r.agreement for r in runs], metric.threshold),
            runs=runs,
            picture_path=written,
            total_ms=round((time.perf_counter() - started) * 1000, 2),
            notes=[f"budget {b}: {note}" for b, r in zip(chosen, results) for note in r.notes],
        )

    @staticmethod
    def panel(picture: Image.Image, run: BudgetRun, boxes: list[Detection]) -> Image.Image:
        """Detections drawn on the original; otherwise the detail the encoder saw, shown at one size."""
        if run.detections is not None:
            return annotate(picture, boxes)
        seen = picture.resize(tuple(run.seen_size), Image.Resampling.BICUBIC)
        scale = min(1.0, PANEL_SIDE / max(picture.size))
        shown = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        return seen.resize(shown, Image.Resampling.NEAREST)


def parsed_boxes(result: Result) -> list[Detection]:
    """The result's boxes as Detections again, for matching and drawing."""
    if not isinstance(result, DetectResult):
        return []
    return [
        Detection(
            label=d.label, box=tuple(d.box), box_normalized=tuple(d.box_normalized), raw=d.raw,  # type: ignore[arg-type]
            seg_codes=tuple(d.seg_codes),
        )
        for d in result.detections
    ]

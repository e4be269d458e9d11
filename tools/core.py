"""What every task runs on: the resident model, the image loader, the model's turn, and results.

``Vision`` (the front door) and the jobs behind it (``tools.jobs``: tiles, budgets, consensus,
verify) share one ``Core``: one request at a time on a local model, concurrently on a serving
engine, and results built the same way whoever ran the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from .boxes.drawing import annotate
from .checks import MAX_HISTORY_TURNS, MAX_IMAGES, check_count, parse_history
from .errors import ImageError, InvalidRequest, Unsupported
from .inputs import ImageLoader, LoadedImage
from .inputs.media import Media
from .model import Model
from .options import GenerationOptions
from .outputs import cap_picture, save_png
from .results import BoxesResult, Result
from .tasks import Answer, Ask, Generation, Task, Turn
from .text import clean_model_text

NO_MODEL_MESSAGE = (
    "No vision-language model is loaded here; only ocr with engine 'rapidocr' works without one."
)

#: how often a request waiting for the model looks whether it was cancelled
CANCEL_POLL_S = 0.05


#: earlier turns as callers give them: plain dicts ({"role", "content", "images"}) or Turns
History = Sequence[Mapping[str, Any] | Turn]


class Core:
    """One model, its images and its turn. ``resident`` may be None where no model is loaded:
    then only the offline OCR engine works."""

    def __init__(self, resident: Model | None, loader: ImageLoader) -> None:
        self.resident = resident
        self.loader = loader
        # One request on a local model at a time: generate() is not re-entrant.
        self._lock = threading.Lock()

    @property
    def model(self) -> Model:
        if self.resident is None:
            raise Unsupported(NO_MODEL_MESSAGE)
        return self.resident

    def plain(self, text: str) -> str:
        """User text with the model's control strings broken, so it cannot forge turns."""
        return text if self.resident is None else self.resident.neutralise(text)

    @contextmanager
    def turn(self, options: GenerationOptions | None) -> Iterator[Model]:
        """The model, held for one call unless it takes concurrent calls; a request cancelled
        while it waits for its turn gives the turn up."""
        backend = self.model
        options = options or GenerationOptions()
        if backend.concurrent:
            options.check_cancelled()
            yield backend
            return
        while not self._lock.acquire(timeout=CANCEL_POLL_S):
            options.check_cancelled()
        try:
            options.check_cancelled()
            yield backend
        finally:
            self._lock.release()

    def run(self, ask: Ask, options: GenerationOptions | None) -> Answer:
        """One task on the model: checked against its capabilities first, then run in its turn."""
        # Refused before waiting for the model: what the family cannot do does not queue.
        self.model.check(ask)
        with self.turn(options) as model:
            return model.run(ask, options or GenerationOptions())

    def load_images(self, refs: Sequence[str], *, at_least: int = 1) -> list[LoadedImage]:
        """Images decoded; a PDF or a clip is refused (tasks that take them call ``open_images``)."""
        return [self.loader.load(ref) for ref in counted(refs, at_least)]

    def open_images(self, refs: Sequence[str], *, at_least: int = 1) -> list[LoadedImage | Media]:
        """Images decoded, PDFs and clips read whole (their pages and frames come later, checked first)."""
        return [self.loader.open(ref) for ref in counted(refs, at_least)]

    # -- results ------------------------------------------------------------------

    def result(
        self, cls: type[Result], generation: Generation, images: list[LoadedImage], started: float | None, **extra: Any
    ) -> Any:
        """The result of one generation; ``started`` (the call's start) makes ``total_ms`` count image loading too."""
        timings = generation.timings
        if started is not None:
            timings = timings.model_copy(update={"total_ms": round((time.perf_counter() - started) * 1000, 2)})
        return cls(
            text=generation.text,
            model=self.model.model_id,
            family=self.model.family,
            runtime=self.model.runtime.kind,
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

    def boxes_result(
        self,
        cls: type[BoxesResult],
        answer: Answer,
        loaded: list[LoadedImage],
        started: float | None,
        labels: list[str],
        annotated_path: str | None = None,
    ) -> Any:
        parsed = answer.detections
        assert parsed is not None
        answer.generation.notes.extend(f"dropped {reason}" for reason in parsed.dropped)
        return self.result(
            cls,
            answer.generation,
            loaded,
            started,
            labels=labels,
            image_size=list(loaded[0].size),
            detections=[replace(d, label=clean_model_text(d.label), raw=clean_model_text(d.raw)) for d in parsed.detections],
            annotated_path=annotated_path,
        )

    def model_info(self) -> dict[str, Any]:
        """What a client needs to know of the resident model to plan its requests."""
        return {**self.model.info(), "max_images": MAX_IMAGES, "max_history_turns": MAX_HISTORY_TURNS}

    def parse_history(self, history: History) -> list[Turn]:
        """Prior turns from plain dicts: ``{"role", "content", "images"}``."""
        return parse_history(history, self.plain, self.history_images)

    def history_images(self, refs: Sequence[str]) -> list[LoadedImage]:
        check_count(refs)
        loaded = []
        for ref in refs:
            try:
                loaded.append(self.loader.load(ref))
            except ImageError as error:
                # Named as the argument it came in, not as the call's images.
                error.param = error.param or "history"
                raise
        return loaded

    def boxes(
        self,
        cls: type[BoxesResult],
        task: Task,
        image: str,
        labels: list[str],
        budget: int | None,
        options: GenerationOptions | None,
        annotated_path: str | Path | None,
    ) -> Any:
        """One detect or segment run on the whole image."""
        started = time.perf_counter()
        loaded = self.load_images([image])
        answer = self.run(Ask(task, (loaded[0].input,), labels=tuple(labels), budget=budget), options)
        assert answer.detections is not None
        written = save_annotated(loaded[0].image, answer.detections.detections, annotated_path, answer.generation.notes)
        return self.boxes_result(cls, answer, loaded, started, labels, written)


def counted(refs: Sequence[str] | str, at_least: int) -> Sequence[str]:
    """``refs`` (one reference alone too), at least ``at_least`` and at most the call's image cap."""
    if isinstance(refs, str):
        refs = [refs]
    if len(refs) < at_least:
        raise InvalidRequest("Give at least one image: a path, an http(s) URL, a data: URI or an image_id.", param="images")
    check_count(refs)
    return refs


def save_picture(image: Image.Image, path: str | Path, notes: list[str]) -> str:
    """Write a full-size picture, capped to what a person can use; the cap goes in ``notes``."""
    image, note = cap_picture(image)
    if note:
        notes.append(note)
    return str(save_png(image, path))


def save_annotated(picture: Image.Image, detections: Sequence[Any], path: str | Path | None, notes: list[str]) -> str | None:
    """``picture`` with ``detections`` drawn, written to ``path`` (None: not asked for, nothing written)."""
    return None if path is None else save_picture(annotate(picture, detections), path, notes)

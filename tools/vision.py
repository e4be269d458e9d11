"""The vision core's front door: image references and plain values in, structured results out.

``Vision`` has one method a task. Each checks its parameters (``tools.checks``), resolves its
images and its budget, and runs the model in its turn (``tools.core``); work that takes more
than one run of the model is a job of its own (``tools.jobs``: tiles, consensus, verify,
compare_budgets, pages and frames, extract); what every task shares (images, history, one
detect run, results) is ``Core``'s. Adapters stay thin: they only translate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checks import check_consensus, check_count, check_labels, check_text
from .core import Core, History
from .errors import InvalidRequest
from .extract import DEFAULT_MAX_NEW_TOKENS, DEFAULT_THRESHOLD, Schema, schema_from
from .inputs import LoadedImage
from .inputs.media import Media
from .jobs import auto_budget, parts as parts_job, verify as verify_job
from .jobs import budgets as compare_job, consensus as consensus_job, extract as extract_job, tiles as tiles_job
from .jobs.auto_budget import AUTO
from .options import GenerationOptions
from .reading import tiling
from .reading.offline import ENGINES
from .results import ChatResult, CompareResult, DescribeResult, DetectResult, ExtractResult, OcrResult, SegmentResult
from .tasks import Ask, Progress
from .text import clean_model_text


class Vision(Core):
    """One model behind validated operations: one at a time on a local model, concurrent on an engine.

    ``resident`` may be None where no model is loaded: then only the offline OCR engine works.
    """

    def describe(
        self,
        images: Sequence[str],
        prompt: str = "",
        history: History = (),
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
        pages: str | None = None,
    ) -> DescribeResult:
        """``images`` may name PDFs (their pages, or ``pages``) and one clip (through the family's video path)."""
        started = time.perf_counter()
        prompt = self.plain(check_text(prompt, "The prompt", "prompt").strip())
        check_count(images)
        turns = self.parse_history(history)
        opened = self.open_images(images, at_least=0 if turns else 1)
        parts_job.check_pages_argument(opened, pages)
        if any(isinstance(item, Media) for item in opened):
            return parts_job.describe(self, opened, prompt, turns, budget, options or GenerationOptions(), pages, started)
        loaded = [item for item in opened if isinstance(item, LoadedImage)]
        chosen, reason = auto_budget.resolve(self.model, budget, "describe", loaded)
        # An empty prompt stays empty: each family asks for a caption its own way.
        ask = Ask("describe", tuple(image.input for image in loaded), prompt, history=tuple(turns), budget=chosen)
        return self.result(DescribeResult, self.run(ask, options).generation, loaded, started, budget_reason=reason)

    def chat(
        self,
        images: Sequence[str],
        prompt: str,
        history: History = (),
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
    ) -> ChatResult:
        """One assistant turn that answers in text or picks vision tools to call (families with function calling)."""
        started = time.perf_counter()
        prompt = self.plain(check_text(prompt, "The message", "message").strip())
        if not prompt:
            raise InvalidRequest("The {param} is empty; say what you want to know about the images.", param="message")
        check_count(images)
        turns = self.parse_history(history)
        opened = self.open_images(images, at_least=0)
        loaded, seen_as = parts_job.previews(self, opened)
        chosen, budget_reason = auto_budget.resolve(self.model, budget, "describe", loaded)
        ask = Ask("chat", tuple(image.input for image in loaded), prompt, history=tuple(turns), budget=chosen)
        answer = self.run(ask, options)
        generation, reply = answer.generation, answer.reply
        assert reply is not None
        generation.text = clean_model_text(reply.text)
        generation.notes.extend(f"ignored {reason}" for reason in reply.invalid)
        generation.notes.extend(seen_as)
        result = self.result(
            ChatResult, generation, loaded, started, tool_calls=list(reply.calls), budget_reason=budget_reason
        )
        result.image_ids = [item.id if isinstance(item, Media) else item.image_id for item in opened]
        return result

    def ocr(
        self,
        image: str,
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
        engine: str = "vlm",
        tiles: str | int | None = None,
        pages: str | None = None,
    ) -> OcrResult:
        """Read all text; ``engine="rapidocr"`` reads offline, with no model, and adds line boxes.

        ``tiles`` (auto, off or a number across the long side) reads a large image in overlapping tiles;
        a PDF is read page by page (``pages`` chooses them), tiled where a page needs it unless ``tiles`` says.
        """
        if engine not in ENGINES:
            raise InvalidRequest(f"OCR engine {engine!r} does not exist; use {' or '.join(ENGINES)}.", param="engine")
        started = time.perf_counter()
        opened = self.open_images([image])
        parts_job.check_pages_argument(opened, pages)
        if isinstance(opened[0], Media):
            return parts_job.read(self, opened[0], budget, options or GenerationOptions(), engine, tiles, pages, started)
        image = opened[0].image_id  # loaded once: the calls below find it by id
        choice = tiling.parse_tiles(tiles)
        if engine == "rapidocr":
            # The offline engine has no budget: "auto" asks for none.
            return tiles_job.read_offline(self, image, None if budget == AUTO else budget, started, choice)  # type: ignore[arg-type]
        loaded = self.load_images([image])
        chosen, reason = auto_budget.resolve(self.model, budget, "ocr", loaded)
        return tiles_job.read(self, loaded[0], chosen, reason, options or GenerationOptions(), choice, started)

    def detect(
        self,
        image: str,
        labels: Sequence[str],
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
        annotated_path: str | Path | None = None,
        tiles: str | int | None = None,
        consensus: Sequence[int] | None = None,
        verify: bool = False,
        pages: str | None = None,
    ) -> DetectResult:
        """Boxes for ``labels``; with ``annotated_path``, also writes the annotated PNG there.

        ``tiles`` (auto, off or a number across the long side) looks in overlapping tiles and
        maps every box back to the page; each box names the tiles it was found in. ``consensus``
        runs those budgets together and fuses their boxes; ``verify`` asks the model about each
        box's crop.
        """
        labels = [self.plain(label) for label in check_labels(labels)]
        options = options or GenerationOptions()
        opened = self.open_images([image])
        parts_job.check_pages_argument(opened, pages)
        if isinstance(opened[0], Media):
            if consensus is not None or verify:
                raise InvalidRequest(
                    "{param} works on one picture; for a PDF or a clip, choose one page or frame (#pages=N or "
                    "#t=SECONDS) first.", param="consensus" if consensus is not None else "verify",
                )
            return parts_job.detect(
                self, opened[0], labels, budget, options, annotated_path, tiles, pages, time.perf_counter()
            )
        image = opened[0].image_id
        choice = tiling.parse_tiles(tiles)
        # An empty list asks for consensus of nothing: refused (check_consensus), not quietly a plain detect.
        if consensus is not None:
            check_consensus(consensus, choice, budget)
            chosen = compare_job.check_budgets(self.model, consensus, param="consensus")
            result = consensus_job.detect(self, image, labels, chosen, options, annotated_path)
        else:
            reason = None
            if budget == AUTO:
                loaded = self.load_images([image])
                budget, reason = auto_budget.resolve(self.model, budget, "detect", loaded)
                image = loaded[0].image_id  # loaded once: the calls below find it by id
            if choice != tiling.TILES_OFF:
                result = tiles_job.detect(self, image, labels, budget, options, annotated_path, choice, reason)  # type: ignore[arg-type]
            else:
                result = self.boxes(DetectResult, "detect", image, labels, budget, options, annotated_path)  # type: ignore[arg-type]
                result.budget_reason = reason
        return verify_job.verified(self, result, options) if verify else result

    def segment(
        self,
        image: str,
        label: str,
        budget: int | None = None,
        options: GenerationOptions | None = None,
        annotated_path: str | Path | None = None,
    ) -> SegmentResult:
        """The box and mask codes of ``label`` (families that segment); ``annotated_path`` as for detect."""
        labels = [self.plain(one) for one in check_labels([label])]
        return self.boxes(SegmentResult, "segment", image, labels, budget, options, annotated_path)

    def compare_budgets(
        self,
        image: str,
        task: str = "describe",
        prompt: str = "",
        labels: Sequence[str] = (),
        budgets: Sequence[int] | None = None,
        options: GenerationOptions | None = None,
        picture_path: str | Path | None = None,
        progress: Progress | None = None,
        pages: str | None = None,
    ) -> CompareResult:
        """Run one task at several budgets (None: all the model's); each run is scored against the highest.

        A PDF or a clip gives one page (``pages`` or ``#page=N``) or one frame (``#t=SECONDS``)."""
        opened = self.open_images([image])
        parts_job.check_pages_argument(opened, pages)
        source = None
        if isinstance(opened[0], Media):
            image, source = parts_job.single(self, opened[0], pages, None, "compare_budgets")
        else:
            image = opened[0].image_id
        result = compare_job.compare(
            self, image, task, prompt, labels, budgets, options or GenerationOptions(), picture_path, progress
        )
        result.source = source
        return result

    def extract(
        self,
        images: Sequence[str],
        schema: str | Mapping[str, Any] | Schema | None = None,
        fields: str | None = None,
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
        annotated_path: str | Path | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        verify: bool = True,
        progress: Progress | None = None,
        pages: str | None = None,
    ) -> ExtractResult:
        """The object a JSON Schema (or compact ``fields``) describes, read from ``images`` under the schema's
        grammar, every value with its box, its confidence and, under ``threshold`` with ``verify``, a second
        read from its crop; with ``annotated_path``, the picture of the located values is written there. A PDF
        gives its pages (or ``pages``) as images."""
        chosen = schema_from(schema, fields)
        check_count(images)
        options = options or GenerationOptions(max_new_tokens=DEFAULT_MAX_NEW_TOKENS)
        return extract_job.extract(
            self, images, chosen, budget, options, annotated_path, threshold, verify, progress, pages
        )

"""The vision core's front door: image references and plain values in, structured results out.

``Vision`` resolves image references through the access policy, validates every
parameter, runs the backend (one request at a time on a local model, concurrently on a
serving engine), and builds the results that the CLI prints and the MCP server returns.
Adapters stay thin: they only translate.
"""

from __future__ import annotations

import threading
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from . import auto_budget, compare, fusion, tiled, tiling
from .auto_budget import AUTO
from .detections import Agreement, Detection, from_pixel_box
from .drawing import annotate, grid
from .outputs import cap_picture, save_png
from .errors import InvalidRequest, Unsupported
from .inputs import ImageLoader, LoadedImage
from .model import Model
from .ocr_engines import ENGINES, rapidocr
from .options import GenerationOptions
from .results import (
    BoxesResult,
    BudgetRun,
    BudgetTimings,
    ChatResult,
    CompareResult,
    DescribeResult,
    DetectResult,
    OcrResult,
    Result,
    SegmentResult,
    TileOut,
)
from .streaming import streaming
from .text import clean_model_text
from .verify import verify as verify_boxes
from .tasks import Answer, Ask, Generation, Progress, Task, Turn

MAX_PROMPT_CHARS = 32_000
#: an earlier answer sent back as history: the longest answer (8192 tokens) the model can write
MAX_ANSWER_CHARS = 8192 * 32
MAX_IMAGES = 16
MAX_LABELS = 20
MAX_LABEL_CHARS = 100
MAX_HISTORY_TURNS = 64

#: long side of each panel of a comparison picture
PANEL_SIDE = 768

#: how often a request waiting for the model looks whether it was cancelled
CANCEL_POLL_S = 0.05


def check_text(text: str, what: str, param: str | None = None, limit: int = MAX_PROMPT_CHARS) -> str:
    """``text`` if it is usable prompt text; ``param`` names the request parameter it came in."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{what} must be text.", param=param)
    if "\x00" in text:
        raise InvalidRequest(f"{what} contains a NUL byte; remove it and send the text again.", param=param)
    if len(text) > limit:
        raise InvalidRequest(f"{what} is {len(text)} characters; the limit is {limit}.", param=param)
    try:
        # Lone surrogates (undecodable bytes in argv, or an in-process caller) crash tokenizers.
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} is not valid Unicode text; send it as UTF-8.", param=param) from None
    return text


def check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        labels = [labels]
    cleaned = [check_text(label, "A label", "labels").strip() for label in labels]
    if not cleaned or not all(cleaned):
        raise InvalidRequest("Give at least one non-empty label to detect, for example 'person'.", param="labels")
    if len(cleaned) > MAX_LABELS:
        raise InvalidRequest(f"{len(cleaned)} labels given; detect at most {MAX_LABELS} at once.", param="labels")
    for label in cleaned:
        if len(label) > MAX_LABEL_CHARS or any(_breaks_line(char) for char in label):
            raise InvalidRequest(
                f"Labels must be one line of at most {MAX_LABEL_CHARS} characters, without control characters.",
                param="labels",
            )
    return list(dict.fromkeys(cleaned))


#: bidirectional overrides and isolates: they reorder what a person reads
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _breaks_line(char: str) -> bool:
    """A character a one-line label may not hold: controls (\\r, ESC, ...), line and paragraph separators."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def check_count(refs: Sequence[str]) -> None:
    """The image cap, counted from the references before any is read."""
    if not isinstance(refs, str) and len(refs) > MAX_IMAGES:
        raise InvalidRequest(f"{len(refs)} images given; send at most {MAX_IMAGES} in one call.", param="images")


def fused_boxes(budgets: Sequence[int], boxes: Sequence[Sequence[Detection]], size: tuple[int, int]) -> list[Detection]:
    """The boxes each budget found, fused (weighted box fusion); each says which budgets found it."""
    found = [
        fusion.RunBox(n, d.label, tuple(float(v) for v in d.box))  # type: ignore[arg-type]
        for n, run in enumerate(boxes) for d in run
    ]
    out = []
    for fused in fusion.fuse(found, len(budgets)):
        found_by = [budgets[n] for n in fused.runs]
        box = from_pixel_box(fused.label, fused.box, size, f"fused from budgets {found_by}")
        out.append(replace(box, agreement=Agreement(tuple(found_by), tuple(fused.ious), fused.agreement)))
    return out


def tile_out(tile: tiling.Tile, text: str | None = None) -> TileOut:
    return TileOut(index=tile.index, box=list(tile.box), text=text)


NO_MODEL_MESSAGE = (
    "No vision-language model is loaded here; only ocr with engine 'rapidocr' works without one."
)


def check_consensus(consensus: Sequence[int], tiles: str | int, budget: int | str | None) -> None:
    """What consensus needs before any model is known (a front end calls this before loading one,
    too): two budgets or more, and no budget or tiles beside them, since it runs its own budgets
    on the whole image."""
    if tiles != tiling.TILES_OFF or budget is not None:
        raise InvalidRequest(
            "{param} runs its own budgets on the whole image; leave {param:budget} and {param:tiles} unset.",
            param="consensus",
        )
    two_budgets(consensus, "consensus")


def two_budgets(budgets: Sequence[int], param: str) -> list[int]:
    """``budgets`` sorted, once each; refused unless there are two or more to compare."""
    chosen = sorted(set(budgets))
    if len(chosen) < 2:
        # Named as the caller named them: the CLI's detect takes them as --consensus, not --budgets.
        template = "Give at least two different {param} to compare" if param == "budgets" else (
            "Give {param} at least two different budgets to compare"
        )
        raise InvalidRequest(template + ", for example {list:70,280,1120}.", param=param)
    return chosen


class Vision:
    """One model behind validated operations: one at a time on a local model, concurrent on an engine.

    ``resident`` may be None where no model is loaded: then only the offline OCR engine works.
    """

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

    def _plain(self, text: str) -> str:
        """User text with the model's control strings broken, so it cannot forge turns."""
        return text if self.resident is None else self.resident.neutralise(text)

    @contextmanager
    def _turn(self, options: GenerationOptions | None) -> Iterator[Model]:
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

    # -- inputs -----------------------------------------------------------------

    def load_images(self, refs: Sequence[str], *, at_least: int = 1) -> list[LoadedImage]:
        if isinstance(refs, str):
            refs = [refs]
        if len(refs) < at_least:
            raise InvalidRequest("Give at least one image: a path, an http(s) URL, a data: URI or an image_id.", param="images")
        check_count(refs)
        return [self.loader.load(ref) for ref in refs]

    def parse_history(self, history: Sequence[Mapping[str, Any] | Turn]) -> list[Turn]:
        """Prior turns from plain dicts: ``{"role", "content", "images"}``."""
        if len(history) > MAX_HISTORY_TURNS:
            raise InvalidRequest(f"History has {len(history)} turns; send at most {MAX_HISTORY_TURNS}.", param="history")
        # Every entry is checked and its images counted before one image is read or decoded.
        checked: list[Turn | tuple[str, str, list[str]]] = []
        for n, entry in enumerate(history, start=1):
            if isinstance(entry, Turn):
                checked.append(entry)
                continue
            if not isinstance(entry, Mapping):
                raise InvalidRequest(f"History entry {n} must be an object with 'role' and 'content'.", param="history")
            role = entry.get("role")
            if role not in ("user", "assistant"):
                raise InvalidRequest(f"History entry {n} has role {role!r}; use 'user' or 'assistant'.", param="history")
            # An answer the model wrote may be longer than a prompt; it must never be refused on the way back.
            limit = MAX_ANSWER_CHARS if role == "assistant" else MAX_PROMPT_CHARS
            text = self._plain(check_text(entry.get("content", ""), f"History entry {n}", "history", limit))
            refs = entry.get("images") or []
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise InvalidRequest(f"History entry {n} has 'images' that is not a list of image strings.", param="history")
            checked.append((role, text, refs))
        count = sum(len(c.images) if isinstance(c, Turn) else len(c[2]) for c in checked)
        if count > MAX_IMAGES:
            raise InvalidRequest(f"History holds {count} images, more than {MAX_IMAGES}; drop older turns.", param="history")
        turns: list[Turn] = []
        for item in checked:
            if isinstance(item, Turn):
                turns.append(item)
                continue
            role, text, refs = item
            images = tuple(loaded.input for loaded in self.load_images(refs, at_least=0))
            turns.append(Turn(role=role, text=text, images=images))  # type: ignore[arg-type]
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

    def _run(self, ask: Ask, options: GenerationOptions | None) -> Answer:
        """One task on the model: checked against its capabilities first, then run in its turn."""
        # Refused before waiting for the model: what the family cannot do does not queue.
        self.model.check(ask)
        with self._turn(options) as model:
            return model.run(ask, options or GenerationOptions())

    def describe(
        self,
        images: Sequence[str],
        prompt: str = "",
        history: Sequence[Mapping[str, Any] | Turn] = (),
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
    ) -> DescribeResult:
        started = time.perf_counter()
        prompt = self._plain(check_text(prompt, "The prompt", "prompt").strip())
        check_count(images)
        turns = self.parse_history(history)
        loaded = self.load_images(images, at_least=0 if turns else 1)
        chosen, reason = self.auto_budget(budget, "describe", loaded)
        # An empty prompt stays empty: each family asks for a caption its own way.
        ask = Ask("describe", tuple(image.input for image in loaded), prompt, history=tuple(turns), budget=chosen)
        return self._result(DescribeResult, self._run(ask, options).generation, loaded, started, budget_reason=reason)

    def chat(
        self,
        images: Sequence[str],
        prompt: str,
        history: Sequence[Mapping[str, Any] | Turn] = (),
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
    ) -> ChatResult:
        """One assistant turn that answers in text or picks vision tools to call (families with function calling)."""
        started = time.perf_counter()
        prompt = self._plain(check_text(prompt, "The message", "message").strip())
        if not prompt:
            raise InvalidRequest("The {param} is empty; say what you want to know about the images.", param="message")
        check_count(images)
        turns = self.parse_history(history)
        loaded = self.load_images(images, at_least=0)
        chosen, budget_reason = self.auto_budget(budget, "describe", loaded)
        ask = Ask("chat", tuple(image.input for image in loaded), prompt, history=tuple(turns), budget=chosen)
        answer = self._run(ask, options)
        generation, reply = answer.generation, answer.reply
        assert reply is not None
        generation.text = clean_model_text(reply.text)
        generation.notes.extend(f"ignored {reason}" for reason in reply.invalid)
        return self._result(
            ChatResult, generation, loaded, started, tool_calls=list(reply.calls), budget_reason=budget_reason
        )

    def ocr(
        self,
        image: str,
        budget: int | str | None = None,
        options: GenerationOptions | None = None,
        engine: str = "vlm",
        tiles: str | int | None = None,
    ) -> OcrResult:
        """Read all text; ``engine="rapidocr"`` reads offline, with no model, and adds line boxes.

        ``tiles`` (auto, off or a number across the long side) reads a large image in overlapping tiles.
        """
        if engine not in ENGINES:
            raise InvalidRequest(f"OCR engine {engine!r} does not exist; use {' or '.join(ENGINES)}.", param="engine")
        started = time.perf_counter()
        choice = tiling.parse_tiles(tiles)
        if engine == "rapidocr":
            # The offline engine has no budget: "auto" asks for none.
            return self._offline_ocr(image, None if budget == AUTO else budget, started, choice)  # type: ignore[arg-type]
        loaded = self.load_images([image])
        chosen, reason = self.auto_budget(budget, "ocr", loaded)
        options = options or GenerationOptions()
        ask = Ask("ocr", (loaded[0].input,), budget=chosen)
        self.model.check(ask)
        # Planned, and refused past the cap, before the call waits for the model.
        plan = self._plan(self.model, loaded[0].size, choice, chosen)
        short = tiling.shortfall(loaded[0].size, choice)
        with self._turn(options) as model:
            if plan is None:
                answer = model.run(ask, options)
                answer.generation.notes.extend([short] if short else [])
                return self._result(OcrResult, answer.generation, loaded, started, budget_reason=reason)
            runs = tiled.vlm_tiled(model, "ocr", loaded[0].image, (), plan, chosen, options)
        generation = tiled.combined(runs, tiled.page_text(runs))
        generation.notes.extend([short] if short else [])
        outs = [tile_out(tile, g.text) for tile, (g, _) in zip(runs.tiles, runs.runs)]
        return self._result(
            OcrResult, generation, loaded, started, tiles=outs, budget_reason=self._tiled_reason(reason, "ocr", runs)
        )

    def _tiled_reason(self, reason: str | None, task: str, runs: tiled.TiledRuns) -> str | None:
        """An automatic budget's reason, with what the tiles kept where the image was read in tiles."""
        if reason is None or runs.budget is None:
            return reason
        page = runs.tiles[0].page
        largest = max((tile.size for tile in runs.tiles), key=lambda size: size[0] * size[1])
        seen = self.model.seen_size(largest, runs.budget)
        return reason + auto_budget.in_tiles(task, page, len(runs.tiles), largest, seen)

    def auto_budget(
        self, budget: int | str | None, task: str, loaded: Sequence[LoadedImage]
    ) -> tuple[int | None, str | None]:
        """The budget to use and, for ``"auto"``, why (``tools.auto_budget``); other values pass through."""
        if budget != AUTO:
            if isinstance(budget, str):
                raise InvalidRequest(f"Budget {budget[:20]!r} is not a number or 'auto'.", param="budget")
            return budget, None
        model = self.model
        caps = model.capabilities
        if not caps.budgets:
            return None, f"{model.display_name} has a fixed resolution, so there is no budget to choose"
        if not loaded:
            return caps.default_budget, "no image, so the default budget"
        # The largest image decides: it is the one a budget shrinks most.
        size = max((image.size for image in loaded), key=lambda s: s[0] * s[1])
        return auto_budget.choose(task, size, caps.budgets, caps.default_budget or max(caps.budgets), model.seen_size)

    @staticmethod
    def _plan(model: Model, size: tuple[int, int], choice: str | int, budget: int | None) -> list[tiling.Tile] | None:
        """The tiles to read, or None to read the image whole."""
        if choice == tiling.TILES_OFF:
            return None
        plan = tiled.vlm_plan(model, size, choice, tiled.tile_budget(model, budget))
        return plan if len(plan) > 1 else None

    def _offline_ocr(self, image: str, budget: int | None, started: float, tiles: str | int) -> OcrResult:
        if budget is not None:
            raise InvalidRequest("The rapidocr engine has no visual-token budget; leave {param} unset.", param="budget")
        reader = rapidocr()
        loaded = self.load_images([image])
        reading = tiled.rapidocr_tiled(reader, loaded[0].image, tiles)
        read_in = [tile_out(tile) for tile in reading.tiles] if len(reading.tiles) > 1 else None
        notes = [note for note in [tiling.shortfall(loaded[0].size, tiles)] if note]
        if reading.reread:
            notes.append(f"{reading.reread} pieces seen in parts or twice by the tiles were joined and read as one")
        return OcrResult(
            text=reading.text,
            model=reader.model,
            family=reader.name,
            runtime="offline",
            budget=None,
            image_ids=[loaded[0].image_id],
            image_tokens=None,
            prompt_tokens=0,
            generated_tokens=0,
            finish_reason="stop",
            timings=reading.timings.model_copy(update={"total_ms": round((time.perf_counter() - started) * 1000, 2)}),
            engine="rapidocr",
            lines=list(reading.lines),
            tiles=read_in,
            notes=notes,
        )

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
    ) -> DetectResult:
        """Boxes for ``labels``; with ``annotated_path``, also writes the annotated PNG there.

        ``tiles`` (auto, off or a number across the long side) looks in overlapping tiles and
        maps every box back to the page; each box names the tiles it was found in. ``consensus``
        runs those budgets together and fuses their boxes; ``verify`` asks the model about each
        box's crop.
        """
        labels = [self._plain(label) for label in check_labels(labels)]
        choice = tiling.parse_tiles(tiles)
        # An empty list asks for consensus of nothing: refused (check_consensus), not quietly a plain detect.
        if consensus is not None:
            check_consensus(consensus, choice, budget)
            result = self._consensus_detect(image, labels, consensus, options or GenerationOptions(), annotated_path)
            return self._verified(result, verify, options, annotated_path)
        reason = None
        if budget == AUTO:
            loaded = self.load_images([image])
            budget, reason = self.auto_budget(budget, "detect", loaded)
            image = loaded[0].image_id  # loaded once: the calls below find it by id
        if choice != tiling.TILES_OFF:
            result = self._tiled_detect(
                image, labels, budget, options or GenerationOptions(), annotated_path, choice, reason
            )
            reason = result.budget_reason
        else:
            result = self._boxes(DetectResult, "detect", image, labels, budget, options, annotated_path)  # type: ignore[arg-type]
        result.budget_reason = reason
        return self._verified(result, verify, options, annotated_path)

    def _consensus_detect(
        self,
        image: str,
        labels: list[str],
        budgets: Sequence[int],
        options: GenerationOptions,
        annotated_path: str | Path | None,
    ) -> DetectResult:
        """The budgets in one batch (Gemma 4), their boxes fused; each box says which budgets found it."""
        started = time.perf_counter()
        chosen = self.check_budgets(budgets, param="consensus")
        loaded = self.load_images([image])
        picture = loaded[0].image
        ask = Ask("detect", (loaded[0].input,), labels=tuple(labels))
        with self._turn(options) as model:
            answers = model.run_budgets(ask, chosen, options)
        runs = [(answer.generation, answer.detections) for answer in answers]
        fused = fused_boxes(chosen, [parsed.detections if parsed else [] for _, parsed in runs], picture.size)
        generation = tiled.combined(
            tiled.TiledRuns([], runs, max(chosen)),
            "\n".join(f"budget {b}: {g.text}" for b, (g, _) in zip(chosen, runs)),
            [f"budget {b}" for b in chosen],
        )
        generation.notes.extend(
            f"budget {b}: dropped {reason}" for b, (_, p) in zip(chosen, runs) for reason in (p.dropped if p else [])
        )
        written = None
        if annotated_path is not None:
            written = self._save_picture(annotate(picture, fused), annotated_path, generation.notes)
        return self._result(
            DetectResult, generation, loaded, started,
            labels=labels, image_size=list(picture.size), detections=fused, annotated_path=written, consensus=chosen,
        )

    def _verified(
        self, result: DetectResult, verify: bool, options: GenerationOptions | None, annotated_path: str | Path | None
    ) -> DetectResult:
        """With ``verify``, each box's crop asked whether it shows the label, all in one batch per label."""
        if not verify or not result.detections:
            return result
        options = options or GenerationOptions()
        picture = self.loader.load(result.image_ids[0]).image
        with self._turn(options) as model:
            verdicts, generations = verify_boxes(model, picture, result.detections, options)
        result.detections = [replace(d, verified=verdict) for d, verdict in zip(result.detections, verdicts)]
        yes, no = verdicts.count(True), verdicts.count(False)
        budget = generations[0].budget if generations else None
        at = f" at budget {budget}" if budget is not None else ""
        result.notes.append(
            f"verify: asked about {len(verdicts)} crops{at}: {yes} yes, {no} no, {len(verdicts) - yes - no} unclear"
        )
        return result

    def _tiled_detect(
        self,
        image: str,
        labels: list[str],
        budget: int | None,
        options: GenerationOptions,
        annotated_path: str | Path | None,
        choice: str | int,
        reason: str | None = None,
    ) -> DetectResult:
        """Detect in tiles; ``reason`` (an automatic budget's) is returned as the result's, with what the tiles kept."""
        started = time.perf_counter()
        loaded = self.load_images([image])
        picture = loaded[0].image
        ask = Ask("detect", (loaded[0].input,), labels=tuple(labels), budget=budget)
        self.model.check(ask)
        plan = self._plan(self.model, picture.size, choice, budget)
        with self._turn(options) as model:
            if plan is None:
                answer = model.run(ask, options)
            else:
                runs = tiled.vlm_tiled(model, "detect", picture, labels, plan, budget, options)
        short = tiling.shortfall(picture.size, choice)
        if plan is None:
            assert answer.detections is not None
            answer.generation.notes.extend([short] if short else [])
            written = None if annotated_path is None else self._save_picture(
                annotate(picture, answer.detections.detections), annotated_path, answer.generation.notes
            )
            whole = self._boxes_result(DetectResult, answer, loaded, started, labels, written)
            whole.budget_reason = reason
            return whole
        detections, provenance, dropped = tiled.page_detections(runs, picture.size)
        text = "\n".join(f"tile {tile.index}: {g.text}" for tile, (g, _) in zip(runs.tiles, runs.runs))
        generation = tiled.combined(runs, text)
        generation.notes.extend([short] if short else [])
        generation.notes.extend(f"dropped {why}" for why in dropped)
        written = None if annotated_path is None else self._save_picture(
            annotate(picture, detections), annotated_path, generation.notes
        )
        return self._result(
            DetectResult, generation, loaded, started,
            labels=labels,
            image_size=list(loaded[0].size),
            detections=[
                replace(d, label=clean_model_text(d.label), raw=clean_model_text(d.raw), tiles=tuple(p))
                for d, p in zip(detections, provenance)
            ],
            annotated_path=written,
            tiles=[tile_out(tile) for tile in runs.tiles],
            budget_reason=self._tiled_reason(reason, "detect", runs),
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
        labels = [self._plain(one) for one in check_labels([label])]
        return self._boxes(SegmentResult, "segment", image, labels, budget, options, annotated_path)

    def _boxes(
        self,
        cls: type[BoxesResult],
        task: Task,
        image: str,
        labels: list[str],
        budget: int | None,
        options: GenerationOptions | None,
        annotated_path: str | Path | None,
    ) -> Any:
        started = time.perf_counter()
        loaded = self.load_images([image])
        answer = self._run(Ask(task, (loaded[0].input,), labels=tuple(labels), budget=budget), options)
        written = None
        if annotated_path is not None:
            assert answer.detections is not None
            written = self._save_picture(
                annotate(loaded[0].image, answer.detections.detections), annotated_path, answer.generation.notes
            )
        return self._boxes_result(cls, answer, loaded, started, labels, written)

    @staticmethod
    def _save_picture(image: Image.Image, path: str | Path, notes: list[str]) -> str:
        """Write a full-size picture, capped to what a person can use; the cap goes in ``notes``."""
        image, note = cap_picture(image)
        if note:
            notes.append(note)
        return str(save_png(image, path))

    def _boxes_result(
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
        return self._result(
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

    def check_budgets(self, budgets: Sequence[int], param: str = "budgets") -> list[int]:
        """``budgets`` sorted and checked against the model's; ``param`` names the argument they came in."""
        allowed = self.model.capabilities.budgets
        if not allowed:
            raise self.model.no_budgets_error()
        chosen = two_budgets(budgets, param)
        bad = [b for b in chosen if b not in allowed]
        if bad:
            choices = " / ".join(map(str, allowed))
            raise InvalidRequest(
                f"Budget {bad[0]} is not available for {self.model.display_name}; use {choices}.", param=param
            )
        return chosen

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
    ) -> CompareResult:
        """Run one task at several budgets; each run is scored against the highest budget.

        The backend may run the budgets as one batch (Gemma 4 does): each run then reports its own encoding
        and prefill and the batch's shared decode (``BudgetTimings``).
        """
        started = time.perf_counter()
        if task not in compare.METRICS:
            raise InvalidRequest(f"Task {task!r} cannot be compared; use describe, ocr or detect.", param="task")
        chosen = self.check_budgets(self.model.capabilities.budgets if budgets is None else budgets)
        prompt = self._plain(check_text(prompt, "The prompt", "prompt").strip())
        if task == "detect":
            # A detection prompt may carry its labels: "person, car".
            labels = [self._plain(x) for x in check_labels(labels or [part for part in prompt.split(",") if part.strip()])]
        loaded = self.load_images([image])[0]
        options = options or GenerationOptions()
        ask = Ask(task, (loaded.input,), prompt, labels=tuple(labels))  # type: ignore[arg-type]
        self.model.check(replace(ask, budget=chosen[0]))
        # Several runs' text interleaved in one stream would make no sense to a reader.
        with streaming(None):
            if self.model.concurrent:
                answers = self._run_concurrently(ask, chosen, options, progress)
            else:
                with self._turn(options) as model:
                    answers = model.run_budgets(ask, chosen, options, progress)
        results = [
            self._result(OcrResult if task == "ocr" else DescribeResult, answer.generation, [loaded], None)
            if answer.detections is None
            else self._boxes_result(DetectResult, answer, [loaded], None, list(labels))
            for answer in answers
        ]
        if progress:
            progress(len(chosen), len(chosen), "done")
        self._check_budgets_applied(chosen, results)
        metric = compare.METRICS[task]
        reference = results[-1]
        boxes = [r.detections if isinstance(r, DetectResult) else [] for r in results]
        runs = [
            BudgetRun(
                budget=budget,
                image_tokens=r.image_tokens,
                seen_size=list(self.model.seen_size(loaded.size, budget)),
                prompt_tokens=r.prompt_tokens,
                generated_tokens=r.generated_tokens,
                finish_reason=r.finish_reason,
                text=r.text,
                detections=r.detections if isinstance(r, DetectResult) else None,
                agreement=compare.agreement(task, r.text, reference.text, boxes[i], boxes[-1]),
                # a batched backend's per-row split comes through; an engine's plain timings leave it null
                timings=BudgetTimings.model_validate(r.timings, from_attributes=True),
                cache=r.cache,
            )
            for i, (budget, r) in enumerate(zip(chosen, results))
        ]
        recommended, why = self._recommend(task, loaded.size, chosen, [r.agreement for r in runs], metric.threshold)
        fused = fused_boxes(chosen, boxes, loaded.size) if task == "detect" else None
        written = None
        picture_notes: list[str] = []
        if picture_path is not None:
            shown = compare.varying_timings([run.timings.model_dump() for run in runs])
            panels = [(panel_title(run, shown), self.panel(loaded.image, run, b)) for run, b in zip(runs, boxes)]
            if fused is not None:
                panels.append(("fused (weighted box fusion)", annotate(loaded.image, fused)))
            written = self._save_picture(grid(panels), picture_path, picture_notes)
        return CompareResult(
            task=task,
            model=self.model.model_id,
            family=self.model.family,
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

    def _recommend(
        self, task: str, size: tuple[int, int], budgets: list[int], agreements: list[float], threshold: float
    ) -> tuple[int, str]:
        """The smallest budget that agrees with the highest and is not below what budget 'auto' would pick."""
        agreeing = compare.recommend(budgets, agreements, threshold)
        if auto_budget.needed_scale(task, size) is None:
            return agreeing, f"the smallest budget whose agreement reaches {threshold}"
        caps = self.model.capabilities
        floor, reason = auto_budget.choose(task, size, budgets, caps.default_budget or max(budgets), self.model.seen_size)
        if floor <= agreeing:
            return agreeing, f"the smallest budget whose agreement reaches {threshold}; budget 'auto' would pick {floor}"
        return floor, f"agreement reaches {threshold} at {agreeing}, but {reason}"

    def _run_concurrently(
        self, ask: Ask, budgets: list[int], options: GenerationOptions, progress: Progress | None
    ) -> list[Answer]:
        """The budgets' runs all at once, up to the runtime's concurrency, for an engine that batches them."""
        model = self.model
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

    def _check_budgets_applied(self, budgets: list[int], results: list[Result]) -> None:
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

    @staticmethod
    def panel(picture: Image.Image, run: BudgetRun, boxes: list[Detection]) -> Image.Image:
        """Detections drawn on the original; otherwise the detail the encoder saw, shown at one size."""
        if run.detections is not None:
            return annotate(picture, boxes)
        seen = picture.resize(tuple(run.seen_size), Image.Resampling.BICUBIC)
        scale = min(1.0, PANEL_SIDE / max(picture.size))
        shown = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        return seen.resize(shown, Image.Resampling.NEAREST)


def panel_title(run: BudgetRun, shown_timings: Sequence[str] = ()) -> str:
    return compare.run_label(run.budget, run.image_tokens, run.timings.model_dump(), shown_timings)

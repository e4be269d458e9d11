"""Tasks over the pages of a PDF or the frames of a clip: each part keeps its ``Origin``.

- describe: a PDF's pages go into one prompt as images; a clip goes through the family's
  own video path (frames with their timestamps), or is refused before a frame is decoded.
- ocr: each page (or frame) read in turn, tiled where it needs it, by the model or the offline
  engine; pages the model reads whole go through ``Model.run_many`` a few at a time (one batch
  on Gemma 4), so memory holds a few rendered pages, never the whole document.
- detect: boxes on each page or frame, each box with its origin, and one contact sheet of them.
- compare_budgets: one page or one frame, stored like an image so the comparison finds it by id.

Progress goes out per part (``tools.progress``), a cancelled call stops between parts, and
nothing is written before the last part is done.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .. import progress
from ..boxes.detections import Detection
from ..boxes.drawing import annotate, grid
from ..checks import MAX_IMAGES
from ..core import Core, save_picture
from ..errors import InvalidRequest
from ..inputs import LoadedImage
from ..inputs.documents import Clip, Document, DpiChoice, clip_frames
from ..inputs.media import Media, Part, Selection, part_id
from ..inputs.origin import Origin
from ..inputs.pdf import MAX_DPI, OFFLINE_DPI, POINTS, READ_DPI, page_pixels
from ..inputs.video import decode, probe, sample
from ..model import Model, check_video
from ..options import GenerationOptions
from ..reading import tiling
from ..reading.offline import rapidocr
from ..results import DescribeResult, DetectResult, OcrResult, PageText, PartBoxes, TileOut, Timings
from ..runtimes.streaming import streaming
from ..tasks import Answer, Ask, Generation, Turn, combine
from ..text import clean_model_text
from . import auto_budget
from . import tiles as tiles_job

#: pages (or frames) the model reads together: one run_many batch, the rendered pages memory holds
BATCH = 4
#: families without budgets see a fixed size: pages are rendered at a resolution that keeps print legible
FIXED_DPI = 96.0
#: the long side of one panel of a contact sheet
SHEET_PANEL = 512
#: panels across a contact sheet
SHEET_COLUMNS = 4

Opened = LoadedImage | Media


def step(done: int, total: int, message: str) -> None:
    progress.step(done, total, message)


# ---------------------------------------------------------------- resolution


def look_dpi(model: Model | None, budget: int | None) -> DpiChoice:
    """Pages a model sees whole: rendered so that the long side is what its encoder sees at ``budget``
    (no pixel rendered that the encoder would scale away); a fixed-resolution family at ``FIXED_DPI``."""

    def choose(size_pt: tuple[float, float]) -> float:
        if model is None or not model.capabilities.budgets:
            return FIXED_DPI
        seen = model.seen_size(page_pixels(size_pt, MAX_DPI), budget)
        return POINTS * max(seen) / max(size_pt)

    return choose


def read_dpi(model: Model | None, budget: int | None, tiles: str | int) -> DpiChoice:
    """Pages to read: at least ``READ_DPI`` where tiles may cut them (small print survives), else as seen whole."""
    if model is None:
        return lambda size_pt: OFFLINE_DPI
    look = look_dpi(model, budget)
    if tiles != tiling.TILES_OFF:
        return lambda size_pt: max(READ_DPI, look(size_pt))
    return look


def document(core: Core, media: Media, pages: str | None, dpi_for: DpiChoice) -> Document:
    return Document(media, pages, dpi_for, core.loader.policy.limits)


def clip(core: Core, media: Media) -> Clip:
    return clip_frames(media, core.loader.policy.limits, step=step)


def check_pages_argument(opened: Sequence[Opened], pages: str | None) -> None:
    if pages is not None and not any(isinstance(o, Media) and o.kind == "pdf" for o in opened):
        raise InvalidRequest("{param} chooses pages of a PDF, and no PDF was given.", param="pages")


# ---------------------------------------------------------------- describe


def describe(
    core: Core, opened: Sequence[Opened], prompt: str, turns: list[Turn], budget: int | str | None,
    options: GenerationOptions, pages: str | None, started: float,
) -> DescribeResult:
    """describe over images, PDF pages and at most one clip."""
    model = core.model
    clips = [o for o in opened if isinstance(o, Media) and o.kind == "clip"]
    if clips:
        if len(opened) > 1:
            raise InvalidRequest(
                f"A clip goes to describe alone, and {clips[0].what} came with {len(opened) - 1} other "
                "image(s); send them in a call of their own.", param="images",
            )
        # Refused before a frame is decoded: a family without a video path cannot use one.
        check_video(model.dialect, model.on_engine)
        return describe_clip(core, clips[0], prompt, turns, budget, options, started)
    chosen = None if budget == auto_budget.AUTO else budget
    loaded, origins, notes = pictures(core, opened, pages, look_dpi(model, chosen))  # type: ignore[arg-type]
    chosen_budget, reason = auto_budget.resolve(model, budget, "describe", loaded)
    ask = Ask("describe", tuple(image.input for image in loaded), prompt, history=tuple(turns), budget=chosen_budget)
    generation = core.run(ask, options).generation
    generation.notes[:0] = notes
    ids = [o.id if isinstance(o, Media) else o.image_id for o in opened]
    result = core.result(DescribeResult, generation, loaded, started, budget_reason=reason, sources=origins)
    result.image_ids = ids
    return result


def pictures(
    core: Core, opened: Sequence[Opened], pages: str | None, dpi_for: DpiChoice
) -> tuple[list[LoadedImage], list[Origin], list[str]]:
    """Images as they are and every PDF's selected pages, counted against the image cap before any page renders."""
    documents: list[Document] = []
    try:
        for item in opened:
            if isinstance(item, Media):
                documents.append(document(core, item, pages, dpi_for))
        count = sum(1 for o in opened if isinstance(o, LoadedImage)) + sum(len(d) for d in documents)
        if count > MAX_IMAGES:
            raise InvalidRequest(
                f"The call holds {count} images, PDF pages included, more than the {MAX_IMAGES} one prompt may "
                "carry; choose fewer pages with {param}.", param="pages",
            )
        loaded: list[LoadedImage] = []
        origins: list[Origin] = []
        notes: list[str] = []
        docs = iter(documents)
        for item in opened:
            if isinstance(item, LoadedImage):
                loaded.append(item)
                continue
            doc = next(docs)
            notes.extend(doc.notes)
            for part in doc.parts(step):
                loaded.append(part.loaded)
                origins.append(part.origin)  # type: ignore[arg-type]
        return loaded, origins, notes
    finally:
        for doc in documents:
            doc.pdf.close()


def describe_clip(
    core: Core, media: Media, prompt: str, turns: list[Turn], budget: int | str | None,
    options: GenerationOptions, started: float,
) -> DescribeResult:
    reason = None
    if budget == auto_budget.AUTO:
        budget, reason = None, "a clip: each frame at the family's own budget for video"
    frames = clip(core, media)
    ask = Ask("describe", (), prompt, history=tuple(turns), budget=budget, video=frames.as_input())  # type: ignore[arg-type]
    generation = core.run(ask, options).generation
    generation.notes[:0] = frames.notes
    loaded = [part.loaded for part in frames.parts]
    result = core.result(
        DescribeResult, generation, loaded, started, budget_reason=reason,
        sources=[part.origin for part in frames.parts],
    )
    result.image_ids = [media.id]
    return result


# ---------------------------------------------------------------- ocr


def parts_of(core: Core, media: Media, pages: str | None, dpi_for: DpiChoice) -> tuple[Document | Clip, int]:
    if media.kind == "pdf":
        doc = document(core, media, pages, dpi_for)
        return doc, len(doc)
    if pages is not None and media.selection.pages is None:
        raise InvalidRequest("{param} chooses pages of a PDF, and the image given is a video clip.", param="pages")
    frames = clip(core, media)
    return frames, len(frames.parts)


def each_part(source: Document | Clip) -> Sequence[Part] | object:
    return source.parts(step) if isinstance(source, Document) else iter(source.parts)


def read(
    core: Core, media: Media, budget: int | str | None, options: GenerationOptions, engine: str,
    tiles: str | int | None, pages: str | None, started: float,
) -> OcrResult:
    """Each page (or frame) read in turn; the text joins them, each under its page's header."""
    # Documents are tiled where a page needs it unless the call says otherwise.
    choice = tiling.parse_tiles(tiling.TILES_AUTO if tiles is None else tiles)
    offline = engine == "rapidocr"
    if offline and budget is not None and budget != auto_budget.AUTO:
        raise InvalidRequest("The rapidocr engine has no visual-token budget; leave {param} unset.", param="budget")
    model = None if offline else core.model
    fixed = None if budget == auto_budget.AUTO else budget
    if model is not None:
        model.check(Ask("ocr", (), budget=fixed))  # type: ignore[arg-type]
        if budget is None:
            # Small print survives: pages are read at the budget tiles are read at (Gemma 4: 1120).
            fixed = tiles_job.tile_budget(model, None)
    source, total = parts_of(core, media, pages, read_dpi(model, fixed, choice))  # type: ignore[arg-type]
    texts: list[PageText] = []
    generations: list[Generation] = []
    notes: list[str] = list(source.notes)
    reason: str | None = None
    try:
        batch: list[Part] = []

        def flush() -> None:
            nonlocal reason
            if not batch:
                return
            assert model is not None
            if budget == auto_budget.AUTO and reason is None:
                chosen, reason = auto_budget.resolve(model, budget, "ocr", [batch[0].loaded])
            else:
                chosen = fixed
            asks = [Ask("ocr", (part.loaded.input,), budget=chosen) for part in batch]
            for part, answer in zip(batch, run_batch(core, asks, options)):
                add(part, answer.generation, None)
            batch.clear()

        def add(part: Part, generation: Generation, lines: list[Detection] | None = None,
                tiles: list[TileOut] | None = None) -> None:
            assert part.origin is not None
            texts.append(PageText(
                origin=part.origin, text=generation.text, generated_tokens=generation.generated_tokens,
                finish_reason=generation.finish_reason, lines=lines, tiles=tiles,
            ))
            generations.append(generation)
            notes.extend(f"{part.origin.label}: {note}" for note in generation.notes)
            progress.finished(len(texts), total, f"{header(part.origin)}\n{generation.text}\n\n")

        for part in each_part(source):  # type: ignore[attr-defined]
            if offline:
                reading = tiles_job.rapidocr_tiled(rapidocr(), part.loaded.image, choice)
                notes.extend(f"{part.origin.label}: {n}" for n in [tiling.shortfall(part.loaded.size, choice)] if n)
                add(part, Generation(reading.text, None, 0, 0, "stop", None, timings=reading.timings), list(reading.lines),
                    [tiles_job.tile_out(t) for t in reading.tiles] if len(reading.tiles) > 1 else None)
                continue
            assert model is not None
            plan = tiles_job.plan_for(model, part.loaded.size, choice, fixed)
            if plan is None:
                batch.append(part)
                if len(batch) >= BATCH:
                    flush()
                continue
            flush()
            with streaming(None):
                page = tiles_job.read(core, part.loaded, fixed, None, options, choice, time.perf_counter())
            add(part, Generation(page.text, page.image_tokens, page.prompt_tokens, page.generated_tokens,
                                 page.finish_reason, page.budget, timings=page.timings, notes=list(page.notes)),
                tiles=page.tiles)
        flush()
    finally:
        if isinstance(source, Document):
            source.pdf.close()
    text = "\n\n".join(f"{header(t.origin)}\n{t.text}" for t in texts)
    if offline:
        reader = rapidocr()
        return OcrResult(
            text=text, model=reader.model, family=reader.name, runtime="offline", budget=None, image_ids=[media.id],
            image_tokens=None, prompt_tokens=0, generated_tokens=0, finish_reason="stop",
            timings=Timings(
                preprocess_ms=round(sum(g.timings.preprocess_ms for g in generations), 2),
                generate_ms=round(sum(g.timings.generate_ms for g in generations), 2),
                total_ms=elapsed(started),
            ),
            engine="rapidocr", notes=notes, pages=texts, sources=[t.origin for t in texts],
        )
    generation = combine(generations, text, generations[0].budget if generations else None, [])
    generation.notes = notes
    result = core.result(OcrResult, generation, [], started, budget_reason=reason, pages=texts,
                         sources=[t.origin for t in texts])
    result.image_ids = [media.id]
    return result


def header(origin: Origin) -> str:
    """The line a part's text comes under: '--- page 3 ---' or '--- frame 240 (00:08.0) ---'."""
    return f"--- {origin.label} ---"


def elapsed(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


# ---------------------------------------------------------------- detect


def detect(
    core: Core, media: Media, labels: list[str], budget: int | str | None, options: GenerationOptions,
    annotated_path: str | Path | None, tiles: str | int | None, pages: str | None, started: float,
) -> DetectResult:
    """Boxes on every page or frame, a few parts to a batch; one contact sheet at the end."""
    if tiling.parse_tiles(tiles) != tiling.TILES_OFF:
        raise InvalidRequest(
            "{param} looks at one picture in tiles; for a PDF or a clip, choose one page or frame "
            "(#pages=N or #t=SECONDS) or leave {param} off.", param="tiles",
        )
    model = core.model
    fixed = None if budget == auto_budget.AUTO else budget
    model.check(Ask("detect", (), labels=tuple(labels), budget=fixed))  # type: ignore[arg-type]
    source, total = parts_of(core, media, pages, look_dpi(model, fixed))  # type: ignore[arg-type]
    found: list[PartBoxes] = []
    shown: list[tuple[str, object]] = []
    generations: list[Generation] = []
    notes: list[str] = list(source.notes)
    reason: str | None = None
    try:
        batch: list[Part] = []

        def flush() -> None:
            nonlocal reason
            if not batch:
                return
            chosen = fixed
            if budget == auto_budget.AUTO:
                chosen, why = auto_budget.resolve(model, budget, "detect", [batch[0].loaded])
                reason = reason or why
            asks = [Ask("detect", (part.loaded.input,), labels=tuple(labels), budget=chosen) for part in batch]
            for part, answer in zip(batch, run_batch(core, asks, options)):
                keep(part, answer)
            batch.clear()

        def keep(part: Part, answer: Answer) -> None:
            parsed = answer.detections
            assert parsed is not None and part.origin is not None
            boxes = [
                replace(d, label=clean_model_text(d.label), raw=clean_model_text(d.raw), origin=part.origin)
                for d in parsed.detections
            ]
            found.append(PartBoxes(origin=part.origin, image_size=list(part.loaded.size), detections=boxes))
            generations.append(answer.generation)
            notes.extend(f"{part.origin.label}: {note}" for note in answer.generation.notes)
            notes.extend(f"{part.origin.label}: dropped {why}" for why in parsed.dropped)
            if annotated_path is not None:
                shown.append((f"{part.origin.label}: {len(boxes)} found", thumbnail(annotate(part.loaded.image, boxes))))
            progress.finished(len(found), total, f"{part.origin.label}: {len(boxes)} found")

        for part in each_part(source):  # type: ignore[attr-defined]
            batch.append(part)
            if len(batch) >= BATCH:
                flush()
        flush()
    finally:
        if isinstance(source, Document):
            source.pdf.close()
    written = None
    if annotated_path is not None and shown:
        sheet = grid(shown, columns=min(SHEET_COLUMNS, len(shown)))  # type: ignore[arg-type]
        written = save_picture(sheet, annotated_path, notes)
    generation = combine(generations, "\n".join(f"{p.origin.label}: {g.text}" for p, g in zip(found, generations)),
                         generations[0].budget if generations else None, [])
    generation.notes = notes
    result = core.result(
        DetectResult, generation, [], started, budget_reason=reason, labels=labels,
        image_size=found[0].image_size if found else [0, 0],
        detections=[d for part in found for d in part.detections], annotated_path=written,
        parts=found, sources=[p.origin for p in found],
    )
    result.image_ids = [media.id]
    return result


def run_batch(core: Core, asks: list[Ask], options: GenerationOptions) -> list[Answer]:
    """A batch of parts' asks in one turn at the model; nothing streams (each part's text goes out as
    progress once the part is done)."""
    with streaming(None), core.turn(options) as held:
        return held.run_many(asks, options)


def thumbnail(picture: object) -> object:
    from PIL import Image

    assert isinstance(picture, Image.Image)
    scale = min(1.0, SHEET_PANEL / max(picture.size))
    if scale >= 1.0:
        return picture
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- one part


def single(core: Core, media: Media, pages: str | None, budget: int | None, what: str) -> tuple[str, Origin]:
    """The one page or frame ``what`` (compare_budgets) runs on, stored like an image: its id and origin."""
    model = core.model
    if media.kind == "pdf":
        with document(core, media, pages, look_dpi(model, max(model.capabilities.budgets or (0,)) or None)) as doc:
            if len(doc) != 1:
                raise InvalidRequest(
                    f"{what} compares one page at a time, and {media.what} gives {len(doc)}; choose one with "
                    "{param} (for example 1) or #page=1.", param="pages",
                )
            part = doc.part(0)
    else:
        part = one_frame(core, media)
    core.loader.store.put(part.loaded)
    from .. import scope

    owner = scope.current()
    if owner is not None:
        owner.know(part.loaded.image_id)
    assert part.origin is not None
    return part.loaded.image_id, part.origin


def one_frame(core: Core, media: Media) -> Part:
    """The frame at the start of the reference's span (``#t=SECONDS``), else the clip's middle frame."""
    limits = core.loader.policy.limits
    info = probe(media.data, media.what, limits)
    span = media.selection.span
    index = sample(info, 1)[0] if span is None else min(info.frames - 1, math.floor(span[0] * info.fps))
    frame = decode(media.data, info, [index], media.what)[0]
    loaded = LoadedImage(frame.image, part_id(media.id, f"frame{frame.index}"), media.source, info.codec, media.url)
    return Part(loaded, Origin("frame", media.id, frame=frame.index, time_s=frame.time_s))


def previews(core: Core, opened: Sequence[Opened]) -> tuple[list[LoadedImage], list[str]]:
    """One picture for each reference, to choose a tool by (chat): an image as it is, a PDF's first
    (selected) page, a clip's frame (its span's first, else its middle one)."""
    loaded: list[LoadedImage] = []
    notes: list[str] = []
    for item in opened:
        if isinstance(item, LoadedImage):
            loaded.append(item)
            continue
        if item.kind == "pdf":
            first = re.match(r"\s*(\d+)", item.selection.pages or "") if item.selection.pages else None
            only = replace(item, selection=Selection(pages=first[1] if first else "1"))
            with document(core, only, None, look_dpi(core.model, None)) as doc:
                part = doc.part(0)
        else:
            part = one_frame(core, item)
        assert part.origin is not None
        loaded.append(part.loaded)
        notes.append(f"{item.what}: seen as its {part.origin.label} to choose a tool")
    return loaded, notes

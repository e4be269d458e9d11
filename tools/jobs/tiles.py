"""Reading and detecting in tiles: a large image cut into overlapping tiles, each seen at full size.

``read`` (ocr with the model), ``read_offline`` (ocr with the offline engine) and ``detect`` are
the entry points; each reads the image whole where tiles are off or one tile holds it.

PP-OCR's detector (rapidocr) shrinks any image whose long side passes its ``max_side_len``
(2000 px) before it looks, so small text on a phone photo or a 4K screenshot is searched
for at half size or less, and much of it is never found. Here text is found tile by tile at
full size; pieces that overlaps saw twice, or that a tile edge cut, are joined
(``tiling.merge_text``), and every piece is read once from the page's own pixels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from .. import cancel
from ..reading import tiling
from ..core import Core, save_annotated
from ..boxes.detections import Detection, ParsedDetections
from ..errors import InvalidRequest
from ..inputs import ImageInput, LoadedImage
from ..model import Model
from ..reading.offline import Quad, RapidOcr, Reading, arrange, level, rapidocr, skew, unlevel
from ..options import GenerationOptions
from ..results import DetectResult, OcrResult, TileOut, Timings
from ..tasks import Ask, Generation, Stopwatch, Task, combine
from ..text import clean_model_text
from . import auto_budget


@dataclass
class TiledReading(Reading):
    #: the tiles read, row by row; one whole-page tile when the image was not tiled
    tiles: list[tiling.Tile]
    #: pieces joined from what several tiles saw of them (read from the page as one)
    reread: int = 0


def rapidocr_tiled(reader: RapidOcr, image: Image.Image, tiles: str | int) -> TiledReading:
    """Read ``image`` in the tiles ``tiles`` chooses (``tiling.plan``), at the engine's full size.

    Only finding text needs tiles: the detector is what shrinks a large image. So each tile
    is searched for text, the pieces are put on the page and joined where tiles saw the same
    line (``tiling.merge_text``), and then every piece is read once, from the page's own pixels.
    """
    watch = Stopwatch()
    plan = tiling.plan(image.size, tiles, reader.max_side)
    reader.check_searchable(sorted({tile.size for tile in plan}), tiled=len(plan) > 1)
    preprocess_ms = watch.lap()
    if len(plan) == 1:
        reading = reader.read(image)
        return TiledReading(reading.text, reading.lines, reading.timings, plan)
    quads: list[tuple[int, Quad]] = []
    for tile in plan:
        cancel.check()  # between tiles: a cancelled call searches no further tile
        dx, dy = tile.box[0], tile.box[1]
        quads.extend((tile.index, tuple((x + dx, y + dy) for x, y in quad)) for quad in reader.detect(image.crop(tile.box)))
    # On a tilted page the upright boxes around neighbouring lines overlap, and joining by them
    # chained a whole paragraph into one piece that read as nothing: pieces are joined, and
    # ordered, in the frame where the page's lines run level.
    angle = skew([quad for _, quad in quads])
    found = []
    for index, quad in quads:
        x1, y1, x2, y2 = level(quad, angle)
        # Whole pixels, outward, so that the box holds everything the quadrilateral does.
        found.append(tiling.Found(index, "", (math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))))
    groups = tiling.merge_text(found, plan)
    # A piece one tile saw keeps its own outline; a joined one is the level box around its parts, turned back.
    outlines = [quads[g.members[0]][1] if len(g.members) == 1 else _on_page(unlevel(g.box, angle), image.size) for g in groups]
    readings = reader.read_quads(image, outlines)
    generate_ms = watch.lap()
    text, lines = arrange(outlines, readings, image.size, angle)
    timings = Timings(preprocess_ms=preprocess_ms, generate_ms=generate_ms, total_ms=watch.total())
    return TiledReading(text, lines, timings, plan, reread=sum(len(g.members) > 1 for g in groups))


def _on_page(quad: Quad, size: tuple[int, int]) -> Quad:
    """``quad`` with its corners kept within the page (a joined tilted line's box can reach past an edge)."""
    return tuple((min(max(x, 0.0), size[0]), min(max(y, 0.0), size[1])) for x, y in quad)


# ---------------------------------------------------------------- the vision-language model

#: tiles are read at Gemma 4's highest budget unless the call names one
TILE_BUDGET = 1120
#: a side longer than any image: what the encoder makes of it is the most it sees of a square
_HUGE = 100_000


@dataclass
class TiledRuns:
    """One task's runs over the tiles of one image, in tile order."""

    tiles: list[tiling.Tile]
    runs: list[tuple[Generation, ParsedDetections | None]]
    budget: int | None


def vlm_plan(model: Model, size: tuple[int, int], tiles: str | int, budget: int | None) -> list[tiling.Tile]:
    """The tiles for the model: ``auto`` tiles only an image the encoder would shrink at ``budget``,
    into tiles it sees whole (Gemma 4 at 1120: about 1600 px square); fixed-resolution families
    are not tiled by ``auto``, since no budget says what they see."""
    if tiles == tiling.TILES_AUTO:
        if not model.capabilities.budgets:
            return tiling.plan(size, tiling.TILES_OFF, 0)
        seen = model.seen_size(size, budget)
        if seen[0] >= size[0] and seen[1] >= size[1]:
            return tiling.plan(size, tiling.TILES_OFF, 0)
        side = min(model.seen_size((_HUGE, _HUGE), budget))
        return tiling.plan(size, tiling.TILES_AUTO, side)
    return tiling.plan(size, tiles, 0)


def tile_budget(model: Model, budget: int | None) -> int | None:
    """The budget tiles are read at: the call's, else the highest (families with budgets)."""
    return budget if budget is not None or not model.capabilities.budgets else TILE_BUDGET


def vlm_tiled(
    model: Model,
    task: Task,
    image: Image.Image,
    labels: Sequence[str],
    plan: list[tiling.Tile],
    budget: int | None,
    options: GenerationOptions,
) -> TiledRuns:
    """``task`` (ocr or detect) on each tile of ``plan``, as one batch where the family batches."""
    budget = tile_budget(model, budget)
    asks = [Ask(task, (ImageInput.from_pixels(image.crop(tile.box)),), labels=tuple(labels), budget=budget) for tile in plan]
    answers = model.run_many(asks, options)
    return TiledRuns(plan, [(answer.generation, answer.detections) for answer in answers], budget)


def page_detections(runs: TiledRuns, size: tuple[int, int]) -> tuple[list[Detection], list[tuple[int, ...]], list[str]]:
    """Every tile's boxes in page pixels, merged across seams: the detections, each one's tiles, and
    what the parser dropped (named by tile)."""
    found: list[tiling.Found] = []
    sources: list[Detection] = []
    dropped: list[str] = []
    for tile, (_, parsed) in zip(runs.tiles, runs.runs):
        if parsed is None:
            continue
        dropped.extend(f"tile {tile.index}: {reason}" for reason in parsed.dropped)
        for detection in parsed.detections:
            found.append(tiling.Found(tile.index, detection.label, tiling.to_page(detection.box, tile)))
            sources.append(detection)
    detections, provenance = [], []
    for group in tiling.merge_detections(found, runs.tiles):
        raw = "\n".join(sources[i].raw for i in group.members)
        codes = sources[group.members[0]].seg_codes
        detections.append(Detection(group.label, group.box, tiling.normalized(group.box, size), raw, codes))
        provenance.append(group.tiles)
    return detections, provenance, dropped


def page_text(runs: TiledRuns) -> str:
    """The tiles' readings in reading order (rows of tiles top to bottom, each left to right).

    A line the tile above ended with and the tile below starts with (the overlap, read twice)
    is kept once. Without boxes from the model, text of tiles side by side is not interleaved.
    """
    out: list[list[str]] = []
    above: dict[int, list[str]] = {}
    for tile, (generation, _) in zip(runs.tiles, runs.runs):
        lines = [line for line in (" ".join(l.split()) for l in generation.text.splitlines()) if line]
        previous = above.get(tile.col, [])
        for k in range(min(len(previous), len(lines)), 0, -1):
            if previous[-k:] == lines[:k]:
                lines = lines[k:]
                break
        above[tile.col] = lines or previous
        out.append(lines)
    return "\n\n".join("\n".join(lines) for lines in out if lines)


# ---------------------------------------------------------------- the entry points


def tile_out(tile: tiling.Tile, text: str | None = None) -> TileOut:
    return TileOut(index=tile.index, box=list(tile.box), text=text)


def tiles_of(runs: TiledRuns) -> Generation:
    """The tiles' runs as one generation, each note named by its tile."""
    return combine([g for g, _ in runs.runs], "", runs.budget, [f"tile {t.index}" for t in runs.tiles])


def plan_for(model: Model, size: tuple[int, int], choice: str | int, budget: int | None) -> list[tiling.Tile] | None:
    """The tiles to read, or None to read the image whole; refused past the cap before any work."""
    if choice == tiling.TILES_OFF:
        return None
    plan = vlm_plan(model, size, choice, tile_budget(model, budget))
    return plan if len(plan) > 1 else None


def budget_reason(model: Model, reason: str | None, task: str, runs: TiledRuns) -> str | None:
    """An automatic budget's reason, with what the tiles kept where the image was read in tiles."""
    if reason is None or runs.budget is None:
        return reason
    page = runs.tiles[0].page
    largest = max((tile.size for tile in runs.tiles), key=lambda size: size[0] * size[1])
    seen = model.seen_size(largest, runs.budget)
    return reason + auto_budget.in_tiles(task, page, len(runs.tiles), largest, seen)


def read(
    core: Core, loaded: LoadedImage, budget: int | None, reason: str | None, options: GenerationOptions,
    choice: str | int, started: float,
) -> OcrResult:
    """The model's reading of ``loaded``, whole or in the tiles ``choice`` asks for."""
    ask = Ask("ocr", (loaded.input,), budget=budget)
    core.model.check(ask)
    # Planned, and refused past the cap, before the call waits for the model.
    plan = plan_for(core.model, loaded.size, choice, budget)
    short = [note for note in [tiling.shortfall(loaded.size, choice)] if note]
    with core.turn(options) as model:
        if plan is None:
            answer = model.run(ask, options)
            answer.generation.notes.extend(short)
            return core.result(OcrResult, answer.generation, [loaded], started, budget_reason=reason)
        runs = vlm_tiled(model, "ocr", loaded.image, (), plan, budget, options)
    generation = tiles_of(runs)
    generation.text = page_text(runs)
    generation.notes.extend(short)
    outs = [tile_out(tile, g.text) for tile, (g, _) in zip(runs.tiles, runs.runs)]
    return core.result(
        OcrResult, generation, [loaded], started, tiles=outs, budget_reason=budget_reason(core.model, reason, "ocr", runs)
    )


def read_offline(core: Core, image: str, budget: int | None, started: float, choice: str | int) -> OcrResult:
    """The offline engine's reading of ``image`` (no model), whole or in tiles, with line boxes."""
    if budget is not None:
        raise InvalidRequest("The rapidocr engine has no visual-token budget; leave {param} unset.", param="budget")
    reader = rapidocr()
    loaded = core.load_images([image])[0]
    reading = rapidocr_tiled(reader, loaded.image, choice)
    read_in = [tile_out(tile) for tile in reading.tiles] if len(reading.tiles) > 1 else None
    notes = [note for note in [tiling.shortfall(loaded.size, choice)] if note]
    if reading.reread:
        notes.append(f"{reading.reread} pieces seen in parts or twice by the tiles were joined and read as one")
    return OcrResult(
        text=reading.text,
        model=reader.model,
        family=reader.name,
        runtime="offline",
        budget=None,
        image_ids=[loaded.image_id],
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
    core: Core,
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
    loaded = core.load_images([image])
    picture = loaded[0].image
    ask = Ask("detect", (loaded[0].input,), labels=tuple(labels), budget=budget)
    core.model.check(ask)
    plan = plan_for(core.model, picture.size, choice, budget)
    with core.turn(options) as model:
        if plan is None:
            answer = model.run(ask, options)
        else:
            runs = vlm_tiled(model, "detect", picture, labels, plan, budget, options)
    short = [note for note in [tiling.shortfall(picture.size, choice)] if note]
    if plan is None:
        assert answer.detections is not None
        answer.generation.notes.extend(short)
        written = save_annotated(picture, answer.detections.detections, annotated_path, answer.generation.notes)
        whole = core.boxes_result(DetectResult, answer, loaded, started, labels, written)
        whole.budget_reason = reason
        return whole
    detections, provenance, dropped = page_detections(runs, picture.size)
    generation = tiles_of(runs)
    generation.text = "\n".join(f"tile {tile.index}: {g.text}" for tile, (g, _) in zip(runs.tiles, runs.runs))
    generation.notes.extend(short)
    generation.notes.extend(f"dropped {why}" for why in dropped)
    written = save_annotated(picture, detections, annotated_path, generation.notes)
    return core.result(
        DetectResult, generation, loaded, started,
        labels=labels,
        image_size=list(loaded[0].size),
        detections=[
            replace(d, label=clean_model_text(d.label), raw=clean_model_text(d.raw), tiles=tuple(p))
            for d, p in zip(detections, provenance)
        ],
        annotated_path=written,
        tiles=[tile_out(tile) for tile in runs.tiles],
        budget_reason=budget_reason(core.model, reason, "detect", runs),
    )

"""Reading a large image in tiles with the offline OCR engine, and putting the page back together.

PP-OCR's detector (rapidocr) shrinks any image whose long side passes its ``max_side_len``
(2000 px) before it looks, so small text on a phone photo or a 4K screenshot is searched
for at half size or less, and much of it is never found. Here text is found tile by tile at
full size; pieces that overlaps saw twice, or that a tile edge cut, are joined
(``tiling.merge_text``), and every piece is read once from the page's own pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from . import cancel, tiling
from .detections import Detection, ParsedDetections
from .inputs import ImageInput
from .model import Model
from .options import GenerationOptions
from .ocr_engines import Quad, RapidOcr, Reading, arrange, level, skew, unlevel
from .results import CacheReport, Timings
from .tasks import Ask, Generation, Stopwatch, Task


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


def combined(runs: TiledRuns, text: str, names: Sequence[str] | None = None) -> Generation:
    """One Generation standing for every run's (tiles, or budgets): counts summed, notes named by run."""
    generations = [generation for generation, _ in runs.runs]
    # Rows of one batch each report the batch's timings; calls one after another add up.
    batched = len({g.timings.total_ms for g in generations}) == 1
    first = generations[0].timings
    timings = first.model_copy() if batched else Timings(
        preprocess_ms=round(sum(g.timings.preprocess_ms for g in generations), 2),
        generate_ms=round(sum(g.timings.generate_ms for g in generations), 2),
        total_ms=round(sum(g.timings.total_ms for g in generations), 2),
    )
    visions = {g.cache.vision for g in generations if g.cache is not None}
    cache = None
    if visions:
        cache = CacheReport(vision=visions.pop() if len(visions) == 1 else "partial")
    counts = [g.image_tokens for g in generations]
    return Generation(
        text=text,
        image_tokens=None if None in counts else sum(c for c in counts if c is not None),
        prompt_tokens=sum(g.prompt_tokens for g in generations),
        generated_tokens=sum(g.generated_tokens for g in generations),
        finish_reason="length" if any(g.finish_reason == "length" for g in generations) else "stop",
        budget=runs.budget,
        timings=timings,
        notes=[f"{name}: {note}" for name, g in zip(names or [f"tile {t.index}" for t in runs.tiles], generations)
               for note in g.notes],
        cache=cache,
    )


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

"""Cutting a large image into overlapping tiles, and putting what each tile found back together.

Pure geometry: no model, no engine, no image pixels. A reader or a detector that shrinks
a large image before it looks (PP-OCR to 2000 px, Gemma 4 to about 2.6 megapixels) loses
small text and small objects; read in tiles, each tile is seen at (nearly) full size.

- Tiles overlap, so text or an object cut by one tile's edge is whole in its neighbour.
- Each tile owns a *core*: the page is split at the middle of every overlap, so every page
  pixel belongs to exactly one core. Of one object seen whole by two tiles, the box of the
  tile whose core holds its centre is kept.
- Text pieces from different tiles join when they are the same words or parts of one line,
  and a joined piece is read as one from the page.
- Boxes map back to page pixels by adding the tile's offset: exact, integer arithmetic.
- Detections of the same label from different tiles merge when they overlap enough (IoU),
  or when both are cut by the seam between their tiles and meet across it (edge adjacency).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..boxes.detections import iou
from ..errors import InvalidRequest

Box = tuple[int, int, int, int]

#: ``tiles`` values besides a number: decide from the image size, or never tile
TILES_AUTO = "auto"
TILES_OFF = "off"
#: the most tiles across the long side a caller may ask for (64 tiles on a square page)
MAX_TILES_ACROSS = 8
#: what ``tiles`` may be, as every front end's refusal says it
TILES_FORMS = "'auto', 'off' or a number of tiles across the long side"
#: the most tiles one call reads, however they were chosen: what 8 across make of a square page. With
#: ``auto``, an image within the decoder's 40 megapixels and 10:1 takes at most 22 for rapidocr and 30
#: for the model at budget 1120; a long strip, or a low budget on a large photo, takes hundreds or more
MAX_TILES = MAX_TILES_ACROSS**2
#: the shortest tile a number of tiles may make: a smaller one holds less than a line of text or
#: an object, and each costs a reader's full price (64 tiles of 8 px on a 50 px image took 13 s)
MIN_TILE_SIDE = 64
#: overlap between neighbours, as a fraction of the tile side: wider than a text line or a
#: small object at the sizes tiling is for, so what one edge cuts the neighbour holds whole
OVERLAP_FRACTION = 0.1
#: a box side this close to a tile's inner edge counts as cut by it
EDGE_TOLERANCE_PX = 2
#: detections of one label in two tiles with at least this IoU are one object
MERGE_IOU = 0.5
#: two cut boxes meet across a seam when their extents along it overlap this much (of the shorter)
SEAM_OVERLAP = 0.5


@dataclass(frozen=True)
class Tile:
    index: int
    row: int
    col: int
    #: x1, y1, x2, y2 in page pixels (x2, y2 exclusive)
    box: Box
    #: the part of the page this tile owns; the cores partition the page
    core: Box
    #: the page's (width, height)
    page: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    def inner_edges(self) -> tuple[bool, bool, bool, bool]:
        """Whether the left, top, right, bottom edges lie inside the page (a neighbour is there)."""
        x1, y1, x2, y2 = self.box
        return x1 > 0, y1 > 0, x2 < self.page[0], y2 < self.page[1]


def parse_tiles(value: str | int | None) -> str | int:
    """``auto``, ``off`` or a whole number of tiles across the long side (1 means off)."""
    if value is None:
        return TILES_OFF
    if isinstance(value, bool):
        raise InvalidRequest(f"{{param}} must be {TILES_FORMS}, e.g. 3.", param="tiles")
    text = str(value).strip().lower()
    if text in (TILES_AUTO, TILES_OFF):
        return text
    try:
        count = int(text)
    except ValueError:
        raise InvalidRequest(
            f"{{param}} {str(value)[:20]!r} is not {TILES_FORMS}, e.g. 3.",
            param="tiles",
        ) from None
    if not 1 <= count <= MAX_TILES_ACROSS:
        raise InvalidRequest(
            f"{{param}} must be between 1 and {MAX_TILES_ACROSS} across the long side, not {count}.", param="tiles"
        )
    return TILES_OFF if count == 1 else count


def _axis(length: int, count: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, core start, core end) of ``count`` spans covering 0..length, neighbours overlapping."""
    if count <= 1:
        return [(0, length, 0, length)]
    side = min(length, math.ceil((length + (count - 1) * overlap) / count))
    # Starts spread evenly from 0 to length - side: the last span ends exactly at the page edge.
    starts = [(i * (length - side)) // (count - 1) for i in range(count)]
    spans = [(s, s + side) for s in starts]
    cuts = [0] + [(spans[i][0] + spans[i - 1][1]) // 2 for i in range(1, count)] + [length]
    return [(s, e, cuts[i], cuts[i + 1]) for i, (s, e) in enumerate(spans)]


def grid(size: tuple[int, int], cols: int, rows: int, overlap: int) -> list[Tile]:
    """``cols`` x ``rows`` tiles over a page of ``size``, row by row, neighbours overlapping by ``overlap``."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidRequest(f"The image size must be positive, not {size!r}.")
    xs, ys = _axis(width, cols, overlap), _axis(height, rows, overlap)
    tiles = []
    for r, (y1, y2, cy1, cy2) in enumerate(ys):
        for c, (x1, x2, cx1, cx2) in enumerate(xs):
            tiles.append(Tile(len(tiles), r, c, (x1, y1, x2, y2), (cx1, cy1, cx2, cy2), (width, height)))
    return tiles


def fitting(size: tuple[int, int], count: int) -> int:
    """How many of ``count`` tiles across the long side fit with every tile at least ``MIN_TILE_SIDE``."""
    return max(1, min(count, max(size) // MIN_TILE_SIDE))


def shortfall(size: tuple[int, int], tiles: str | int) -> str | None:
    """What to tell a caller whose number of tiles the image cannot hold, else None."""
    if not isinstance(tiles, int) or fitting(size, tiles) == tiles:
        return None
    held = fitting(size, tiles)
    return (
        f"asked for {tiles} tiles across, but the {max(size)} px side holds {held} of at least {MIN_TILE_SIDE} px"
        + (", so it was read whole" if held == 1 else f"; read in {held} across")
    )


def across(size: tuple[int, int], count: int) -> list[Tile]:
    """``count`` tiles across the long side (no more than leave each ``MIN_TILE_SIDE``); the short
    side gets as many as keep the tiles about square."""
    count = fitting(size, count)
    long_side, short_side = max(size), min(size)
    other = max(1, math.ceil(short_side * count / long_side - 1e-9))
    cols, rows = (count, other) if size[0] >= size[1] else (other, count)
    overlap = math.ceil(OVERLAP_FRACTION * long_side / count)
    return grid(size, cols, rows, overlap)


def count_for(length: int, seen: int) -> int:
    """Tiles along one side of ``length`` px so that each, overlap included, is at most ``seen`` px."""
    if length <= seen:
        return 1
    overlap = math.ceil(OVERLAP_FRACTION * seen)
    return math.ceil((length - overlap) / (seen - overlap))


def plan(size: tuple[int, int], tiles: str | int, seen: int) -> list[Tile]:
    """The tiles for a ``tiles`` choice; ``seen`` is the longest side the engine sees without shrinking.

    ``auto`` tiles only an image with a side longer than ``seen``, and then with as few tiles as
    keep every tile within ``seen`` on both sides. ``off`` gives the whole page as one tile.
    """
    if tiles == TILES_OFF:
        return grid(size, 1, 1, 0)
    if tiles == TILES_AUTO:
        cols, rows = count_for(size[0], seen), count_for(size[1], seen)
        if cols * rows > MAX_TILES:
            # Refused before a tile is made: a strip of 40 million pixels planned 22,000 of them.
            raise InvalidRequest(
                f"{{param}} 'auto' would read this {size[0]} x {size[1]} px image in {cols * rows:,} tiles, more than "
                f"the {MAX_TILES} one call may read; crop it into parts, or read it whole with {{param}} 'off'.",
                param="tiles",
            )
        return grid(size, cols, rows, math.ceil(OVERLAP_FRACTION * seen) if cols * rows > 1 else 0)
    if not isinstance(tiles, int):
        raise InvalidRequest(f"Unknown {{param}} choice {tiles!r}; use 'auto', 'off' or a number.", param="tiles")
    return across(size, tiles)


# ---------------------------------------------------------------- mapping back


def to_page(box: Sequence[int], tile: Tile) -> Box:
    """A box in the tile's pixels as page pixels: the tile's offset added, nothing rounded."""
    dx, dy = tile.box[0], tile.box[1]
    return (int(box[0]) + dx, int(box[1]) + dy, int(box[2]) + dx, int(box[3]) + dy)


def normalized(box: Sequence[int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    width, height = size
    return (round(box[0] / width, 4), round(box[1] / height, 4), round(box[2] / width, 4), round(box[3] / height, 4))


def centre_in_core(box: Sequence[float], tile: Tile) -> bool:
    """Whether the page box's centre lies in the tile's core (half-open, closed at the page's far edges)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x1, y1, x2, y2 = tile.core
    width, height = tile.page
    inside_x = x1 <= cx < x2 or (cx == x2 == width)
    inside_y = y1 <= cy < y2 or (cy == y2 == height)
    return inside_x and inside_y


def cut_sides(box: Sequence[int], tile: Tile) -> tuple[bool, bool, bool, bool]:
    """Which of the page box's left, top, right, bottom sides lie on an inner edge of ``tile`` (the box is cut)."""
    x1, y1, x2, y2 = tile.box
    inner = tile.inner_edges()
    near = (
        box[0] - x1 <= EDGE_TOLERANCE_PX,
        box[1] - y1 <= EDGE_TOLERANCE_PX,
        x2 - box[2] <= EDGE_TOLERANCE_PX,
        y2 - box[3] <= EDGE_TOLERANCE_PX,
    )
    return tuple(n and i for n, i in zip(near, inner))  # type: ignore[return-value]


# ---------------------------------------------------------------- merging detections


@dataclass(frozen=True)
class Found:
    """One box a tile found, already in page pixels."""

    tile: int
    label: str
    box: Box


@dataclass(frozen=True)
class Merged:
    label: str
    box: Box
    #: indices into the input of every box merged into this one, in input order
    members: tuple[int, ...]
    #: the tiles those boxes came from, ascending
    tiles: tuple[int, ...]


def _span_overlap(a1: float, a2: float, b1: float, b2: float) -> float:
    """Overlap of two intervals as a fraction of the shorter one."""
    shorter = min(a2 - a1, b2 - b1)
    return max(0.0, min(a2, b2) - max(a1, b1)) / shorter if shorter > 0 else 0.0


def meet_at_seam(a: Found, b: Found, tiles: Sequence[Tile]) -> bool:
    """Both boxes are cut by the edges facing each other's tile, each reaches across the whole
    overlap of the two tiles, and they line up along the seam: one object the seam split in two.

    Reaching across the overlap is what tells one cut object from two different ones, each cut
    by its own tile's edge (two lines of text on either side of a seam)."""
    ta, tb = tiles[a.tile], tiles[b.tile]
    if (tb.row, tb.col) < (ta.row, ta.col):
        a, b, ta, tb = b, a, tb, ta
    cut_a, cut_b = cut_sides(a.box, ta), cut_sides(b.box, tb)
    tol = EDGE_TOLERANCE_PX
    if tb.row == ta.row and tb.col > ta.col:
        # b to the right: a is cut on its right, b on its left, and each spans the overlap [tb.x1, ta.x2]
        across = cut_a[2] and cut_b[0] and a.box[0] <= tb.box[0] + tol and b.box[2] >= ta.box[2] - tol
        return across and _span_overlap(a.box[1], a.box[3], b.box[1], b.box[3]) >= SEAM_OVERLAP
    if tb.col == ta.col and tb.row > ta.row:
        # b below: a is cut at its bottom, b at its top, and each spans the overlap [tb.y1, ta.y2]
        across = cut_a[3] and cut_b[1] and a.box[1] <= tb.box[1] + tol and b.box[3] >= ta.box[3] - tol
        return across and _span_overlap(a.box[0], a.box[2], b.box[0], b.box[2]) >= SEAM_OVERLAP
    return False


def _groups(found: Sequence[Found], joins: Callable[[Found, Found], bool]) -> list[list[int]]:
    """Indices of ``found`` grouped under ``joins``, closed under joining (union-find); each
    group in index order, groups in the order of their first member."""
    parent = list(range(len(found)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(found):
        for j in range(i + 1, len(found)):
            if joins(a, found[j]):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(found)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _union(boxes: Sequence[Sequence[int]]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def merge_detections(found: Sequence[Found], tiles: Sequence[Tile], iou_threshold: float = MERGE_IOU) -> list[Merged]:
    """One box per object: duplicates from overlaps and pieces cut by seams joined.

    Boxes of one label (ignoring case) from different tiles join a group when their IoU
    reaches ``iou_threshold`` or they meet at a seam; groups are closed under joining. A
    group's box is the union of its cut pieces when every member is cut, else the uncut
    member whose tile's core holds its centre (the tile that saw it most whole), else the
    largest uncut one. Groups come back in the order of their first member.
    """
    def joins(a: Found, b: Found) -> bool:
        if a.tile == b.tile or a.label.casefold() != b.label.casefold():
            return False
        return iou(a.box, b.box) >= iou_threshold or meet_at_seam(a, b, tiles)

    merged = []
    for members in _groups(found, joins):
        whole = [i for i in members if not any(cut_sides(found[i].box, tiles[found[i].tile]))]
        if not whole:
            box = _union([found[i].box for i in members])
        else:
            central = [i for i in whole if centre_in_core(found[i].box, tiles[found[i].tile])]
            pick = central[0] if central else max(whole, key=lambda i: _area(found[i].box))
            box = found[pick].box
        merged.append(
            Merged(found[members[0]].label, box, tuple(members), tuple(sorted({found[i].tile for i in members})))
        )
    return merged


def _area(box: Sequence[int]) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


#: two text pieces from different tiles are one when this much of the smaller lies inside the other
TEXT_CONTAINED = 0.5
#: ... or when they share this much of the shorter one's height (one row) and meet along it
TEXT_SAME_ROW = 0.5


def _contained(a: Sequence[int], b: Sequence[int]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min(_area(a), _area(b))
    return w * h / smaller if smaller > 0 else 0.0


def same_line(a: Sequence[int], b: Sequence[int]) -> bool:
    """Two boxes on one row of text that overlap or nearly touch along it: one line two tiles saw parts of.

    A detector stops a line at the last word it sees whole, a few pixels or a word short of the
    tile's edge, so the pieces' ends cannot be matched to the edge; but each tile sees every word
    inside the overlap whole, so the two pieces of one line overlap there. A gap of up to a line's
    height is allowed (a word one tile cut and the other lost); a column's gutter is wider.
    """
    height = min(a[3] - a[1], b[3] - b[1])
    shared = min(a[3], b[3]) - max(a[1], b[1])
    gap = max(a[0], b[0]) - min(a[2], b[2])
    return height > 0 and shared >= TEXT_SAME_ROW * height and gap <= height


def merge_text(found: Sequence[Found], tiles: Sequence[Tile]) -> list[Merged]:
    """Text pieces from overlapping tiles as one piece per place on the page.

    Pieces from different tiles join when most of the smaller lies in the other (the same words
    seen twice in an overlap, or a line cut through its height by a seam) or when they lie on
    one row and meet along it (``same_line``: a line longer than the overlap). Pieces of one tile
    are the detector's own split and stay apart. A group's box is the union of its members: a
    group of more than one must be read from the page, since no tile saw all of it. Groups come
    back in the order of their first member.
    """
    def joins(a: Found, b: Found) -> bool:
        return a.tile != b.tile and (_contained(a.box, b.box) >= TEXT_CONTAINED or same_line(a.box, b.box))

    merged = []
    for members in _groups(found, joins):
        box = _union([found[i].box for i in members])
        merged.append(Merged(found[members[0]].label, box, tuple(members), tuple(sorted({found[i].tile for i in members}))))
    return merged

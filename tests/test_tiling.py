"""Tile geometry, exact mapping back to the page, and the merge rules, table-driven (pure code)."""

from __future__ import annotations

import pytest

from tools.reading import tiling
from tools.errors import InvalidRequest
from tools.reading.tiling import Found, Tile


def covered(tiles: list[Tile], size: tuple[int, int]) -> bool:
    return all(any(t.box[0] <= x < t.box[2] and t.box[1] <= y < t.box[3] for t in tiles)
               for x in range(0, size[0], max(1, size[0] // 50)) for y in range(0, size[1], max(1, size[1] // 50)))


@pytest.mark.parametrize(
    "value, expected",
    [("auto", "auto"), ("OFF", "off"), (None, "off"), ("1", "off"), (3, 3), (" 8 ", 8)],
)
def test_parse_tiles_accepts(value, expected):
    assert tiling.parse_tiles(value) == expected


@pytest.mark.parametrize("value", ["0", "9", "-2", "many", "2.5", True, ""])
def test_parse_tiles_refuses_in_one_sentence(value):
    with pytest.raises(InvalidRequest) as error:
        tiling.parse_tiles(value)
    assert str(error.value).endswith(".") and "\n" not in str(error.value)
    assert error.value.param == "tiles" and str(error.value).startswith("tiles ")


@pytest.mark.parametrize(
    ("size", "seen", "count"),
    [((4000, 3000), 2000, 6), ((13110, 3049), 1584, 30), ((1, 115_400), 2000, 64)],
)
def test_an_auto_plan_up_to_the_cap_is_made(size, seen, count):
    assert len(tiling.plan(size, "auto", seen)) == count <= tiling.MAX_TILES


@pytest.mark.parametrize(("size", "seen"), [((1, 115_401), 2000), ((1, 40_000_000), 2000), ((8000, 5000), 384)])
def test_an_auto_plan_past_the_cap_is_refused_in_one_sentence(size, seen):
    with pytest.raises(InvalidRequest, match=f"more than the {tiling.MAX_TILES} one call may read") as error:
        tiling.plan(size, "auto", seen)
    assert error.value.param == "tiles" and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "size, cols, rows, overlap, xs, ys",
    [
        # 1000 px in 2 tiles overlapping by 100: 550 px each, the seam core-cut at the overlap's middle
        ((1000, 400), 2, 1, 100, [(0, 550, 0, 500), (450, 1000, 500, 1000)], [(0, 400, 0, 400)]),
        # 3 tiles over 10 px with 2 px overlap: sides ceil(14/3) = 5, starts spread to end at 10
        ((10, 10), 3, 3, 2, [(0, 5, 0, 3), (2, 7, 3, 6), (5, 10, 6, 10)], [(0, 5, 0, 3), (2, 7, 3, 6), (5, 10, 6, 10)]),
        ((640, 480), 1, 1, 0, [(0, 640, 0, 640)], [(0, 480, 0, 480)]),
    ],
)
def test_grid_geometry(size, cols, rows, overlap, xs, ys):
    tiles = tiling.grid(size, cols, rows, overlap)
    assert len(tiles) == cols * rows
    assert [(t.box[0], t.box[2], t.core[0], t.core[2]) for t in tiles[:cols]] == xs
    assert [(t.box[1], t.box[3], t.core[1], t.core[3]) for t in tiles[::cols]] == ys
    assert [t.index for t in tiles] == list(range(len(tiles)))
    assert covered(tiles, size)


@pytest.mark.parametrize(
    "size, tiles, seen, shape",
    [
        ((4000, 3000), "auto", 2000, (3, 2)),   # 4000 needs 3 tiles of <= 2000 with 200 overlap; 3000 needs 2
        ((2000, 1500), "auto", 2000, (1, 1)),   # fits: not tiled
        ((3024, 4032), "auto", 1606, (2, 3)),   # a portrait phone photo at Gemma 4's 1120 budget
        ((4000, 3000), "off", 2000, (1, 1)),
        ((4000, 3000), 4, 2000, (4, 3)),        # 4 across the long side, tiles about square
        ((3000, 4000), 4, 2000, (3, 4)),
        ((1000, 100), 3, 2000, (3, 1)),
    ],
)
def test_plan_shapes(size, tiles, seen, shape):
    plan = tiling.plan(size, tiles, seen)
    cols = 1 + max(t.col for t in plan)
    rows = 1 + max(t.row for t in plan)
    assert (cols, rows) == shape
    assert covered(plan, size)
    if tiles == "auto":
        assert all(max(t.size) <= seen for t in plan)


@pytest.mark.parametrize("size", [(4000, 3000), (999, 1001), (17, 5)])
def test_cores_partition_the_page(size):
    plan = tiling.across(size, 3)
    step = max(1, max(size) // 97)
    # every seam's pixels, and a sample of the rest
    xs = sorted({*range(0, size[0] + 1, step), *(v for t in plan for v in (t.core[0] - 1, t.core[0], t.core[2]))})
    ys = sorted({*range(0, size[1] + 1, step), *(v for t in plan for v in (t.core[1] - 1, t.core[1], t.core[3]))})
    for x in (v for v in xs if 0 <= v <= size[0]):
        for y in (v for v in ys if 0 <= v <= size[1]):
            owners = [t for t in plan if tiling.centre_in_core((x, y, x, y), t)]
            assert len(owners) == 1, (x, y)
            assert owners[0].box[0] <= x <= owners[0].box[2] and owners[0].box[1] <= y <= owners[0].box[3]


def test_boxes_map_back_to_the_page_exactly():
    tile = tiling.grid((4000, 3000), 3, 2, 200)[4]  # row 1, col 1
    assert tile.box[:2] == (1266, 1400)
    assert tiling.to_page((0, 0, 10, 20), tile) == (1266, 1400, 1276, 1420)
    assert tiling.to_page((5, 6, 7, 8), tiling.grid((10, 10), 1, 1, 0)[0]) == (5, 6, 7, 8)


# Two tiles side by side: [0, 550) and [450, 1000) of a 1000 x 400 page, seam core-cut at 500.
PAIR = tiling.grid((1000, 400), 2, 1, 100)
# Two tiles stacked: [0, 550) and [450, 1000) of a 400 x 1000 page.
STACK = tiling.grid((400, 1000), 1, 2, 100)


@pytest.mark.parametrize(
    "tiles, found, expected",
    [
        # the same object whole in both tiles (inside the overlap): one box, from the tile whose core holds it
        (PAIR, [Found(0, "cat", (455, 10, 505, 60)), Found(1, "cat", (456, 11, 505, 61))],
         [("cat", (455, 10, 505, 60), (0, 1))]),
        (PAIR, [Found(0, "cat", (500, 10, 540, 60)), Found(1, "cat", (501, 11, 540, 61))],
         [("cat", (501, 11, 540, 61), (0, 1))]),
        # an object cut by the seam: left piece ends on tile 0's right edge, right piece starts on tile 1's left
        (PAIR, [Found(0, "car", (300, 100, 550, 200)), Found(1, "car", (450, 105, 700, 190))],
         [("car", (300, 100, 700, 200), (0, 1))]),
        # cut pieces that do not line up across the seam stay two objects
        (PAIR, [Found(0, "car", (300, 100, 550, 150)), Found(1, "car", (450, 250, 700, 300))],
         [("car", (300, 100, 550, 150), (0,)), ("car", (450, 250, 700, 300), (1,))]),
        # different labels never merge
        (PAIR, [Found(0, "cat", (470, 10, 530, 60)), Found(1, "dog", (470, 10, 530, 60))],
         [("cat", (470, 10, 530, 60), (0,)), ("dog", (470, 10, 530, 60), (1,))]),
        # labels compare without case
        (PAIR, [Found(0, "Cat", (470, 10, 530, 60)), Found(1, "cat", (470, 10, 530, 60))],
         [("Cat", (470, 10, 530, 60), (0, 1))]),
        # whole in one tile, cut in the other: the whole one wins
        (PAIR, [Found(0, "cup", (480, 10, 549, 60)), Found(1, "cup", (480, 10, 560, 60))],
         [("cup", (480, 10, 560, 60), (0, 1))]),
        # a vertical seam: top piece on tile 0's bottom edge, bottom piece on tile 1's top edge
        (STACK, [Found(0, "pole", (100, 300, 140, 550)), Found(1, "pole", (102, 450, 141, 800))],
         [("pole", (100, 300, 141, 800), (0, 1))]),
        # two objects in one tile are never merged with each other
        (PAIR, [Found(0, "cat", (10, 10, 60, 60)), Found(0, "cat", (12, 12, 60, 60))],
         [("cat", (10, 10, 60, 60), (0,)), ("cat", (12, 12, 60, 60), (0,))]),
    ],
)
def test_merge_detections(tiles, found, expected):
    merged = tiling.merge_detections(found, tiles)
    assert [(m.label, m.box, m.tiles) for m in merged] == expected
    assert sorted(i for m in merged for i in m.members) == list(range(len(found)))


@pytest.mark.parametrize(
    "found, expected",
    [
        # words read twice in the overlap: one piece
        ([Found(0, "total", (470, 10, 530, 30)), Found(1, "total", (470, 11, 531, 30))], [((470, 10, 531, 30), 2)]),
        # a line longer than the overlap, cut by the seam in both tiles: one piece over the whole line
        ([Found(0, "a long li", (100, 50, 550, 70)), Found(1, "ine of text", (450, 51, 900, 70))],
         [((100, 50, 900, 70), 2)]),
        # the detector stopped short of the seam at the last whole word: still one line
        ([Found(0, "a long", (100, 50, 530, 70)), Found(1, "long line of text", (452, 51, 900, 71))],
         [((100, 50, 900, 71), 2)]),
        # a word one tile cut and the other lost leaves a gap narrower than the line is tall: one line
        ([Found(0, "a long", (100, 50, 470, 70)), Found(1, "of text", (485, 50, 900, 70))], [((100, 50, 900, 70), 2)]),
        # a sliver of a line one tile cut through its height lies mostly inside the whole line
        ([Found(0, "sliver", (460, 300, 540, 306)), Found(1, "whole", (458, 296, 542, 318))], [((458, 296, 542, 318), 2)]),
        # neighbouring lines of text stay apart
        ([Found(0, "one", (100, 50, 550, 70)), Found(1, "two", (450, 80, 900, 100))],
         [((100, 50, 550, 70), 1), ((450, 80, 900, 100), 1)]),
        # two columns on one row, a gutter wider than the line is tall between them: apart
        ([Found(0, "left", (100, 50, 520, 70)), Found(1, "right", (560, 50, 900, 70))],
         [((100, 50, 520, 70), 1), ((560, 50, 900, 70), 1)]),
        # rows that touch by a few pixels (tall boxes of close lines) stay apart
        ([Found(0, "one", (100, 50, 550, 74)), Found(1, "two", (450, 68, 900, 92))],
         [((100, 50, 550, 74), 1), ((450, 68, 900, 92), 1)]),
        # pieces of the same tile are the detector's own split: kept apart
        ([Found(0, "a", (10, 10, 50, 30)), Found(0, "b", (30, 10, 70, 30))], [((10, 10, 50, 30), 1), ((30, 10, 70, 30), 1)]),
    ],
)
def test_merge_text(found, expected):
    merged = tiling.merge_text(found, PAIR)
    assert [(m.box, len(m.members)) for m in merged] == expected


@pytest.mark.parametrize(
    "found, joined",
    [
        # one line across the seam: each piece reaches over the whole overlap [450, 550]
        ([Found(0, "t", (100, 50, 550, 70)), Found(1, "t", (450, 50, 900, 70))], True),
        # two different words, each cut by its own tile's edge inside the overlap: not one
        ([Found(0, "t", (500, 50, 550, 70)), Found(1, "t", (450, 50, 490, 70))], False),
    ],
)
def test_meet_at_seam_needs_both_pieces_across_the_overlap(found, joined):
    assert tiling.meet_at_seam(found[0], found[1], PAIR) is joined
    assert tiling.meet_at_seam(found[1], found[0], PAIR) is joined


def test_lines_cut_on_either_side_of_a_horizontal_seam_stay_apart():
    # stacked tiles [0, 550) and [450, 1000): a line cut at the bottom of tile 0 (y 530..550) and
    # another cut at the top of tile 1 (y 450..470) are two lines, not one 100 px tall one
    found = [Found(0, "upper", (10, 530, 300, 550)), Found(1, "lower", (10, 450, 300, 470))]
    assert [len(m.members) for m in tiling.merge_text(found, STACK)] == [1, 1]


@pytest.mark.parametrize(
    "size, tiles, across, note",
    [
        ((50, 50), 8, 1, "asked for 8 tiles across, but the 50 px side holds 1 of at least 64 px, so it was read whole"),
        ((200, 100), 8, 3, "asked for 8 tiles across, but the 200 px side holds 3 of at least 64 px; read in 3 across"),
        ((4000, 3000), 8, 8, None),
        ((200, 100), "auto", None, None),
    ],
)
def test_a_number_of_tiles_stops_at_tiles_of_min_tile_side(size, tiles, across, note):
    assert tiling.shortfall(size, tiles) == note
    if across is not None:
        plan = tiling.plan(size, tiles, 0)
        assert max(t.col for t in plan) + 1 == across
        assert all(max(t.size) >= tiling.MIN_TILE_SIDE for t in plan) or len(plan) == 1

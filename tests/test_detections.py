"""Parsing detection answers: real Gemma 4 and PaliGemma outputs, and every way they go wrong."""

from __future__ import annotations

import json

import pytest

from tools.boxes.detections import Detection, from_json_boxes, iou, match_f1
from tools.families.gemma4 import GRID as GEMMA4_GRID
from tools.families.gemma4 import from_box_2d_json
from tools.families.paligemma import GRID as PALIGEMMA_GRID
from tools.families.paligemma import from_loc_tokens
from tools.errors import InvalidRequest

FENCE = "```"

# Real Gemma 4 outputs from the seed document (grid 1000).
STREET = f"""{FENCE}json
[
  {{"box_2d": [413, 864, 537, 933], "label": "person"}},
  {{"box_2d": [553, 315, 666, 623], "label": "car"}},
  {{"box_2d": [743, 754, 843, 864], "label": "car"}},
  {{"box_2d": [743, 556, 843, 743], "label": "car"}},
  {{"box_2d": [733, 49, 853, 135], "label": "person"}}
]
{FENCE}"""

STREET_EDGE = f"""{FENCE}json
[
  {{"box_2d": [741, 0, 910, 135], "label": "person"}},
  {{"box_2d": [547, 254, 650, 624], "label": "car"}},
  {{"box_2d": [773, 526, 912, 666], "label": "person"}},
  {{"box_2d": [601, 707, 742, 1000], "label": "car"}},
  {{"box_2d": [411, 873, 515, 931], "label": "person"}},
  {{"box_2d": [765, 700, 851, 874], "label": "person"}}
]
{FENCE}"""

STRAY_BRACKET = f"""{FENCE}json
[
  {{"box_2d": [244, 256, 948, 405], "label": "person"}},
  {{"box_2d": [357, 606, 655, 803], "label": "cat"}}
]
]
{FENCE}"""

CAT = '{"box_2d": [10, 20, 30, 40], "label": "cat"}'
DOG = '{"box_2d": [50, 60, 70, 80], "label": "dog"}'
CAT_BOX = ("cat", (20, 10, 40, 30))
DOG_BOX = ("dog", (60, 50, 80, 70))


def boxes(parsed) -> list[tuple[str, tuple[int, int, int, int]]]:
    return [(d.label, d.box) for d in parsed.detections]


@pytest.mark.parametrize(
    "size, expected",
    [
        (
            (1000, 1000),
            [
                ("person", (864, 413, 933, 537)),
                ("car", (315, 553, 623, 666)),
                ("car", (754, 743, 864, 843)),
                ("car", (556, 743, 743, 843)),
                ("person", (49, 733, 135, 853)),
            ],
        ),
        (
            (640, 480),
            [
                ("person", (553, 198, 597, 258)),
                ("car", (202, 265, 399, 320)),
                ("car", (483, 357, 553, 405)),
                ("car", (356, 357, 476, 405)),
                ("person", (31, 352, 86, 409)),
            ],
        ),
    ],
)
def test_real_street_output(size, expected):
    parsed = from_box_2d_json(STREET, size)
    assert boxes(parsed) == expected
    assert parsed.dropped == []
    assert parsed.image_size == size


@pytest.mark.parametrize(
    "size, expected",
    [
        (
            (1000, 1000),
            [
                ("person", (0, 741, 135, 910)),
                ("car", (254, 547, 624, 650)),
                ("person", (526, 773, 666, 912)),
                ("car", (707, 601, 1000, 742)),
                ("person", (873, 411, 931, 515)),
                ("person", (700, 765, 874, 851)),
            ],
        ),
        (
            (640, 480),
            [
                ("person", (0, 356, 86, 437)),
                ("car", (163, 263, 399, 312)),
                ("person", (337, 371, 426, 438)),
                ("car", (452, 288, 640, 356)),
                ("person", (559, 197, 596, 247)),
                ("person", (448, 367, 559, 408)),
            ],
        ),
    ],
)
def test_real_output_reaching_the_right_edge(size, expected):
    parsed = from_box_2d_json(STREET_EDGE, size)
    assert boxes(parsed) == expected
    assert parsed.detections[3].box[2] == size[0]
    assert parsed.detections[3].box_normalized == (0.707, 0.601, 1.0, 0.742)


def test_real_output_with_stray_bracket():
    parsed = from_box_2d_json(STRAY_BRACKET, (1000, 1000))
    assert boxes(parsed) == [("person", (256, 244, 405, 948)), ("cat", (606, 357, 803, 655))]
    assert parsed.dropped == []


def test_raw_is_the_items_own_text():
    parsed = from_box_2d_json(STRAY_BRACKET, (1000, 1000))
    assert [d.raw for d in parsed.detections] == [
        '{"box_2d": [244, 256, 948, 405], "label": "person"}',
        '{"box_2d": [357, 606, 655, 803], "label": "cat"}',
    ]


@pytest.mark.parametrize(
    "text, expected, dropped",
    [
        pytest.param(f"{FENCE}json\n[{CAT}, {DOG}]\n{FENCE}", [CAT_BOX, DOG_BOX], [], id="json-fence"),
        pytest.param(f"{FENCE}\n[{CAT}]\n{FENCE}", [CAT_BOX], [], id="plain-fence"),
        pytest.param(f"[{CAT}]", [CAT_BOX], [], id="bare-list"),
        pytest.param(CAT, [CAT_BOX], [], id="single-object"),
        pytest.param(
            f"Sure! Here they are:\n{FENCE}json\n[{CAT}]\n{FENCE}\nLet me know if you need more.",
            [CAT_BOX],
            [],
            id="prose-around",
        ),
        pytest.param(
            f"{FENCE}json\n[{CAT}]\n{FENCE}\nand\n{FENCE}json\n[{DOG}]\n{FENCE}", [CAT_BOX, DOG_BOX], [], id="two-blocks"
        ),
        pytest.param(
            f"{FENCE}json\n[{CAT}]\n{FENCE}\n{FENCE}json\n[{CAT}]\n{FENCE}",
            [CAT_BOX],
            ["item 2: duplicate of item 1"],
            id="repeated-block",
        ),
        pytest.param(
            f'{FENCE}json\n[{CAT}, {DOG}, {{"box_2d": [5, 6',
            [CAT_BOX, DOG_BOX],
            ["truncated output: 1 incomplete item ignored"],
            id="truncated-in-box",
        ),
        pytest.param(
            f'[{CAT}, {{"box_2d": [1, 2, 3, 4], "label": "ca',
            [CAT_BOX],
            ["truncated output: 1 incomplete item ignored"],
            id="truncated-in-string",
        ),
        pytest.param(f'{{"objects": [{CAT}, {DOG}]}}', [CAT_BOX, DOG_BOX], [], id="wrapper-object"),
        pytest.param(
            f'{{"objects": [{CAT}, {{"box_2d": [1, 2',
            [CAT_BOX],
            ["truncated output: 1 incomplete item ignored"],
            id="truncated-wrapper",
        ),
        pytest.param('[{"box_2d": [30, 40, 10, 20], "label": "cat"}]', [CAT_BOX], [], id="swapped-corners"),
        pytest.param('[{"box_2d": [10, 40, 30, 20], "label": "cat"}]', [CAT_BOX], [], id="swapped-x-only"),
        pytest.param(
            '[{"box_2d": [-5, 20, 1200, 40], "label": "cat"}]', [("cat", (20, 0, 40, 1000))], [], id="out-of-range"
        ),
        pytest.param(
            '[{"box_2d": ["10", "20.4", 30.6, 40], "label": "cat"}]',
            [("cat", (20, 10, 40, 31))],
            [],
            id="strings-and-floats",
        ),
        pytest.param('[{"box_2d": [10, 20, 30, 40]}]', [("object", (20, 10, 40, 30))], [], id="missing-label"),
        pytest.param(
            '[{"box_2d": [10, 20, 30, 40], "label": "  "}]', [("object", (20, 10, 40, 30))], [], id="empty-label"
        ),
        pytest.param(
            '[{"box_2d": [10, 20, 30, 40], "label": " traffic\\nlight "}]',
            [("traffic light", (20, 10, 40, 30))],
            [],
            id="label-whitespace",
        ),
        pytest.param(
            '[{"box_2d": [10, 20, 30, 40], "label": "cat",},]', [CAT_BOX], [], id="trailing-commas"
        ),
        pytest.param(
            f'[{{"box_2d": [10, 20, 30], "label": "cat"}}, {DOG}]',
            [DOG_BOX],
            ["item 1: box has 3 numbers, need 4"],
            id="three-numbers",
        ),
        pytest.param(
            '[{"box_2d": [1, 2, 3, 4, 5], "label": "cat"}]', [], ["item 1: box has 5 numbers, need 4"], id="five-numbers"
        ),
        pytest.param(
            f'[{DOG}, {{"box_2d": [10, "a", 30, 40], "label": "cat"}}]',
            [DOG_BOX],
            ["item 2: box has a non-numeric value 'a'"],
            id="non-numeric",
        ),
        pytest.param(
            '[{"box_2d": [10, null, 30, 40], "label": "cat"}]',
            [],
            ["item 1: box has a non-numeric value None"],
            id="null-value",
        ),
        pytest.param(
            '[{"box_2d": [10, NaN, 30, 40], "label": "cat"}]',
            [],
            ["item 1: box has a non-numeric value nan"],
            id="nan-value",
        ),
        pytest.param(
            '[{"box_2d": [10, true, 30, 40], "label": "cat"}]',
            [],
            ["item 1: box has a non-numeric value True"],
            id="boolean-value",
        ),
        pytest.param('[{"box_2d": "10 20 30 40", "label": "cat"}]', [], ["item 1: box_2d is not a list"], id="box-string"),
        pytest.param('[{"label": "cat"}]', [], ["item 1: no box_2d"], id="no-box"),
        pytest.param("[{box_2d: [1, 2, 3, 4]}]", [], ["item 1: not valid JSON"], id="invalid-json"),
        pytest.param(
            '[{"box_2d": [10, 20, 10, 40], "label": "cat"}]',
            [],
            ["item 1: zero-area box (after clamping to 0..1000)"],
            id="zero-area",
        ),
        pytest.param(
            '[{"box_2d": [1100, 20, 1200, 40], "label": "cat"}]',
            [],
            ["item 1: zero-area box (after clamping to 0..1000)"],
            id="off-grid",
        ),
        pytest.param(
            f'[{CAT}, {DOG}, {{"box_2d": [30, 40, 10, 20], "label": "cat"}}]',
            [CAT_BOX, DOG_BOX],
            ["item 3: duplicate of item 1"],
            id="duplicate-after-swap",
        ),
        pytest.param(
            f'[{CAT}, {{"box_2d": [10, 20, 30, 40], "label": "dog"}}]',
            [CAT_BOX, ("dog", (20, 10, 40, 30))],
            [],
            id="same-box-other-label",
        ),
        pytest.param("", [], [], id="empty"),
        pytest.param("I could not find any cat in this image.", [], [], id="prose-only"),
    ],
)
def test_box_2d_json_robustness(text, expected, dropped):
    parsed = from_box_2d_json(text, (1000, 1000))
    assert boxes(parsed) == expected
    assert parsed.dropped == dropped


def test_fractional_values_are_kept_in_box_normalized():
    parsed = from_box_2d_json('[{"box_2d": ["10", "20.4", 30.6, 40], "label": "cat"}]', (1000, 1000))
    assert parsed.detections[0].box_normalized == (0.0204, 0.01, 0.04, 0.0306)


def test_other_grid():
    parsed = from_json_boxes('[{"box_2d": [0, 0, 512, 1024]}]', (100, 50), key="box_2d", order="yx", grid=1024)
    assert boxes(parsed) == [("object", (0, 0, 100, 25))]


@pytest.mark.parametrize(
    "text, size, expected, dropped",
    [
        pytest.param(
            "<loc0256><loc0128><loc0768><loc0896> cat ; <loc0100><loc0200><loc0300><loc0400> dog",
            (1024, 1024),
            [("cat", (128, 256, 896, 768)), ("dog", (200, 100, 400, 300))],
            [],
            id="two-items",
        ),
        pytest.param(
            "<loc0256><loc0128><loc0768><loc0896> cat",
            (512, 256),
            [("cat", (64, 64, 448, 192))],
            [],
            id="scaled",
        ),
        pytest.param(
            "<loc0000><loc0000><loc1023><loc1023> cat",
            (1000, 1000),
            [("cat", (0, 0, 999, 999))],
            [],
            id="last-bin",
        ),
        pytest.param(
            "<loc0010><loc0020> cat ; <loc0100><loc0200><loc0300><loc0400> dog",
            (1024, 1024),
            [("dog", (200, 100, 400, 300))],
            ["item 1: box has 2 <loc> tokens, need 4"],
            id="partial-group",
        ),
        pytest.param(
            "<loc0100><loc0200><loc0300><loc0400> dog ; <loc0010><loc0020>",
            (1024, 1024),
            [("dog", (200, 100, 400, 300))],
            ["item 2: box has 2 <loc> tokens, need 4"],
            id="truncated-last-group",
        ),
        pytest.param(
            "<loc0100><loc0200><loc0300><loc0400> ; <loc0500><loc0600><loc0700><loc0800> dog",
            (1024, 1024),
            [("object", (200, 100, 400, 300)), ("dog", (600, 500, 800, 700))],
            [],
            id="missing-label",
        ),
        pytest.param(
            "<loc0100><loc0200><loc0300><loc0400>",
            (1024, 1024),
            [("object", (200, 100, 400, 300))],
            [],
            id="only-locs",
        ),
        pytest.param(
            "<loc0300><loc0400><loc0100><loc0200> cat",
            (1024, 1024),
            [("cat", (200, 100, 400, 300))],
            [],
            id="swapped-corners",
        ),
        pytest.param(
            "<loc0100><loc0200><loc0300><loc0400> cat<eos>",
            (1024, 1024),
            [("cat", (200, 100, 400, 300))],
            [],
            id="end-token",
        ),
        pytest.param(
            "detect cat\n<loc0100><loc0200><loc0300><loc0400> cat",
            (1024, 1024),
            [("cat", (200, 100, 400, 300))],
            [],
            id="echoed-prompt",
        ),
        pytest.param(
            "<loc0100><loc0200><loc0300><loc0400> cat ; <loc0100><loc0200><loc0300><loc0400> cat",
            (1024, 1024),
            [("cat", (200, 100, 400, 300))],
            ["item 2: duplicate of item 1"],
            id="duplicate",
        ),
        pytest.param(
            "<loc0100><loc0200><loc0100><loc0400> cat",
            (1024, 1024),
            [],
            ["item 1: zero-area box (after clamping to 0..1024)"],
            id="zero-area",
        ),
        pytest.param("<loc0100><loc0200><loc0300><loc0400><loc0500><loc0600><loc0700><loc0800> cat", (1024, 1024),
                     [], ["item 1: box has 8 <loc> tokens, need 4"], id="missing-separator"),
        pytest.param("no objects", (1024, 1024), [], [], id="prose-only"),
        pytest.param("", (1024, 1024), [], [], id="empty"),
    ],
)
def test_loc_tokens(text, size, expected, dropped):
    parsed = from_loc_tokens(text, size)
    assert boxes(parsed) == expected
    assert parsed.dropped == dropped


SEGS = [12, 55, 0, 127, 3, 99, 64, 8, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    "codes, kept, dropped",
    [
        (SEGS, tuple(SEGS), []),
        (SEGS[:5], (), ["item 1: 5 <seg> tokens, need 16: mask codes ignored, box kept"]),
        ([], (), []),
    ],
)
def test_loc_tokens_with_segmentation(codes, kept, dropped):
    text = "<loc0000><loc0000><loc1023><loc1023>" + "".join(f"<seg{c:03d}>" for c in codes) + " cat"
    parsed = from_loc_tokens(text, (1024, 1024))
    assert boxes(parsed) == [("cat", (0, 0, 1023, 1023))]
    assert parsed.detections[0].seg_codes == kept
    assert parsed.detections[0].raw == text
    assert parsed.dropped == dropped


def test_grids():
    assert (GEMMA4_GRID, PALIGEMMA_GRID) == (1000, 1024)


@pytest.mark.parametrize("size", [(0, 10), (10,), (10.0, 10), (-1, 5)])
def test_bad_image_size_is_the_callers_error(size):
    with pytest.raises(InvalidRequest):
        from_box_2d_json(CAT, size)


def test_to_dict_is_json_ready():
    parsed = from_loc_tokens("<loc0256><loc0128><loc0768><loc0896> cat", (1024, 1024))
    assert json.loads(json.dumps(parsed.to_dict())) == {
        "detections": [
            {
                "label": "cat",
                "box": [128, 256, 896, 768],
                "box_normalized": [0.125, 0.25, 0.875, 0.75],
                "raw": "<loc0256><loc0128><loc0768><loc0896> cat",
                "seg_codes": [],
            }
        ],
        "dropped": [],
        "image_size": [1024, 1024],
    }


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),
        ((0, 0, 2, 2), (1, 0, 3, 2), 1 / 3),
        ((0, 0, 10, 10), (0, 0, 5, 10), 0.5),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),
    ],
)
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def det(label: str, x1: int, y1: int, x2: int, y2: int) -> Detection:
    """A detection on a 100 x 100 image."""
    return Detection(label, (x1, y1, x2, y2), (x1 / 100, y1 / 100, x2 / 100, y2 / 100), raw="")


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        pytest.param([], [], 1.0, id="both-empty"),
        pytest.param([], [det("cat", 0, 0, 10, 10)], 0.0, id="nothing-found"),
        pytest.param([det("cat", 0, 0, 10, 10)], [], 0.0, id="nothing-there"),
        pytest.param([det("cat", 0, 0, 10, 10)], [det("cat", 0, 0, 10, 10)], 1.0, id="same"),
        pytest.param([det("Cat", 0, 0, 10, 10)], [det("cat", 1, 0, 10, 10)], 1.0, id="label-case"),
        pytest.param([det("dog", 0, 0, 10, 10)], [det("cat", 0, 0, 10, 10)], 0.0, id="other-label"),
        pytest.param([det("cat", 0, 0, 10, 10)], [det("cat", 0, 0, 10, 30)], 0.0, id="below-threshold"),
        pytest.param([det("cat", 0, 0, 10, 10)], [det("cat", 0, 0, 10, 20)], 1.0, id="at-threshold"),
        pytest.param(
            [det("cat", 0, 0, 10, 10), det("cat", 50, 50, 60, 60)],
            [det("cat", 0, 0, 10, 10), det("cat", 80, 80, 90, 90)],
            0.5,
            id="half",
        ),
        pytest.param(
            [det("cat", 0, 0, 10, 10), det("cat", 0, 0, 10, 9)],
            [det("cat", 0, 0, 10, 10)],
            2 / 3,
            id="one-to-one",
        ),
        pytest.param(
            # the two 0.9 pairs are taken first, which leaves the 0.5 pairs no partner
            [det("cat", 0, 0, 10, 10), det("cat", 0, 0, 10, 18)],
            [det("cat", 0, 0, 10, 9), det("cat", 0, 0, 10, 20)],
            1.0,
            id="greedy-best-first",
        ),
    ],
)
def test_match_f1(pred, ref, expected):
    assert match_f1(pred, ref) == pytest.approx(expected)


def test_match_f1_across_image_sizes():
    small = from_box_2d_json(STREET_EDGE, (640, 480)).detections
    large = from_box_2d_json(STREET_EDGE, (1000, 1000)).detections
    assert match_f1(small, large, iou_threshold=0.99) == 1.0


def test_match_f1_rejects_bad_threshold():
    with pytest.raises(InvalidRequest):
        match_f1([], [], iou_threshold=1.5)

"""budget 'auto': the smallest budget that keeps what the task needs, with the reason (table-driven)."""

from __future__ import annotations

import pytest

from tests.conftest import sample_image
from tools.jobs import auto_budget
from tools.jobs import budgets as compare
from tools.families.gemma4 import BUDGETS as GEMMA4_BUDGETS
from tools.families.gemma4 import encoder_size as gemma4_seen_size
from tools.errors import InvalidRequest
from tools.inputs import AccessPolicy, ImageLoader
from tools.options import GenerationOptions
from tools.vision import Vision


@pytest.mark.parametrize(
    "task, size, budget, says",
    [
        ("describe", (4000, 3000), 280, "needs no fine detail"),
        ("ocr", (64, 48), 70, "12 px text is seen at 12.0 px"),       # small images are enlarged
        ("ocr", (640, 480), 140, "seen at 11.7 px (640x480 seen at 624x480)"),  # 70: 8.1 px
        ("ocr", (1600, 1200), 1120, "(1600x1200 seen at 1824x1344)"),  # 560: 9.0 px
        ("ocr", (4000, 3000), 1120, "seen at 5.4 px, below the 10 px needed; read it in tiles"),
        ("detect", (640, 480), 280, "(40 px) is seen at 40 px"),     # never asked to be enlarged past its size
        ("detect", (4000, 3000), 280, "(250 px) is seen at 56 px"),  # 140: 40 px, under one 48 px token
    ],
)
def test_choose(task, size, budget, says):
    chosen, reason = auto_budget.choose(task, size, GEMMA4_BUDGETS, 280, gemma4_seen_size)
    assert chosen == budget, reason
    assert says in reason


@pytest.mark.anyio
async def test_auto_budget_reaches_the_result_through_vision(gemma4_backend, tmp_path):
    path = tmp_path / "small.png"
    sample_image(64, 48).save(path)
    vision = Vision(gemma4_backend, ImageLoader(AccessPolicy.for_files([str(path)])))
    options = GenerationOptions(max_new_tokens=2)
    read = vision.ocr(str(path), budget="auto", options=options)
    assert (read.budget, read.budget_reason.startswith("the smallest budget")) == (70, True)
    described = vision.describe([str(path)], budget="auto", options=options)
    assert described.budget == 280 and "default" in described.budget_reason
    found = vision.detect(str(path), ["cat"], budget="auto", options=options)
    assert found.budget == 70 and found.budget_reason
    plain = vision.ocr(str(path), budget=140, options=options)
    assert plain.budget_reason is None
    with pytest.raises(InvalidRequest, match="not a number or 'auto'"):
        vision.ocr(str(path), budget="most", options=options)


@pytest.mark.parametrize(
    "task, size, agreements, expected, says",
    [
        # ocr on a 1600 x 1200 page: 70 already agrees with 1120, but 12 px text needs 1120
        ("ocr", (1600, 1200), [1.0, 1.0, 1.0], 1120, "agreement reaches 0.95 at 70, but"),
        # small image: the rule asks for nothing more, agreement decides
        ("ocr", (64, 48), [0.2, 0.97, 1.0], 280, "budget 'auto' would pick 70"),
        ("describe", (4000, 3000), [0.97, 0.9, 1.0], 70, "whose agreement reaches 0.95"),
    ],
)
def test_compare_recommends_by_agreement_and_the_auto_rule(gemma4_backend, task, size, agreements, expected, says):
    budget, reason = compare.recommendation(gemma4_backend, task, size, [70, 280, 1120], agreements, 0.95)
    assert budget == expected and says in reason


@pytest.mark.parametrize(
    "task, tile, seen, says",
    [
        ("ocr", (1440, 1580), (1488, 1680), "; read in 6 tiles of up to 1440x1580 (seen at 1488x1680), where 12 px text is seen at 12.0 px"),
        ("ocr", (2000, 2000), (1000, 1000), "where 12 px text is seen at 6.0 px"),
        # the object is a sixteenth of the page's long side, not of the tile's
        ("detect", (1423, 1090), (912, 672), "where an object of 1/16 of the long side (250 px) is seen at 154 px"),
    ],
)
def test_a_reason_says_what_the_tiles_kept(task, tile, seen, says):
    assert says in auto_budget.in_tiles(task, (4000, 3000), 6, tile, seen)


def test_auto_budget_in_tiles_says_what_each_tile_keeps(gemma4_backend, tmp_path):
    """The whole page's verdict ("read it in tiles") alone read as if text were lost that the tiles kept."""
    path = tmp_path / "large.png"
    sample_image(4000, 3000).save(path)
    vision = Vision(gemma4_backend, ImageLoader(AccessPolicy.for_files([str(path)])))
    read = vision.ocr(str(path), budget="auto", options=GenerationOptions(max_new_tokens=1), tiles="auto")
    assert read.budget == 1120 and len(read.tiles) == 6
    assert read.budget_reason.startswith("even at 1120 12 px text is seen at 5.4 px")
    assert read.budget_reason.endswith("; read in 6 tiles of up to 1440x1580 (seen at 1488x1680), where 12 px text is seen at 12.0 px")

"""The offline OCR engine: reading order, and known rendered text read back exactly, with no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client
from PIL import Image, ImageDraw, ImageFont

from agent.cli import main
from mcp_server.server import Settings, build_server
from tools.errors import InvalidRequest, Unsupported
from tools.inputs import AccessPolicy, ImageLoader
from tools.reading.offline import RapidOcr, cuts, level, reading_order, skew, strip_padded, unlevel
from tools.vision import Vision

#: what the rendered picture says, in reading order: two columns on the first row
EXPECTED = "Invoice 2026 Paid\nTotal due 42.50 EUR"
ROWS = [((30, 30), "Invoice 2026"), ((680, 36), "Paid"), ((30, 140), "Total due 42.50 EUR")]
FONT_SIZE = 48

needs_rapidocr = pytest.mark.skipif(not RapidOcr.available(), reason="needs the ocr extra (rapidocr-onnxruntime)")


def render(path: Path) -> list[tuple[int, int, int, int]]:
    """Draw EXPECTED; returns each drawn piece's bounding box. Words are spaced wider than the
    font's own space, which the recogniser otherwise reads as no space at all at this size."""
    font = ImageFont.load_default(size=FONT_SIZE)
    image = Image.new("RGB", (900, 260), "white")
    draw = ImageDraw.Draw(image)
    drawn = []
    for (x, y), text in ROWS:
        left = x
        for word in text.split():
            draw.text((x, y), word, font=font, fill="black")
            x = draw.textbbox((x, y), word, font=font)[2] + int(0.6 * FONT_SIZE)
        box = draw.textbbox((left, y), "X", font=font)
        drawn.append((left, box[1], x, box[3]))
    image.save(path)
    return drawn


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int, int, int]]]:
    path = tmp_path_factory.mktemp("ocr") / "invoice.png"
    return path, render(path)


def test_reading_order_groups_rows_and_reads_left_to_right():
    boxes = [
        (300, 105, 400, 135),  # row 2, right
        (10, 10, 100, 40),     # row 1, left
        (10, 100, 200, 130),   # row 2, left
        (250, 14, 300, 44),    # row 1, right, a little lower
    ]
    assert reading_order(boxes) == [[1, 3], [2, 0]]


def test_a_tall_box_does_not_chain_rows_together():
    boxes = [(0, 0, 50, 20), (60, 0, 80, 100), (0, 80, 50, 100)]
    assert reading_order(boxes) == [[0, 1], [2]]
    assert reading_order([]) == []


@needs_rapidocr
@pytest.mark.anyio
async def test_mcp_ocr_reads_rendered_text_back_exactly_with_no_model(page):
    path, drawn = page
    settings = Settings(model="none", allow_dirs=[str(path.parent)], out_dir=path.parent / "out")
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("ocr", {"image": str(path), "engine": "rapidocr"})
        assert not result.is_error, result.content
        data = result.structured_content
        assert data["text"] == EXPECTED
        assert (data["engine"], data["family"], data["image_tokens"], data["budget"]) == ("rapidocr", "rapidocr", None, None)
        assert data["text"] in result.content[0].text
        # Line boxes, in reading order, each inside the row it was drawn in.
        assert " ".join(line["label"] for line in data["lines"]) == EXPECTED.replace("\n", " ")
        for line in data["lines"]:
            assert any(
                x1 - 6 <= line["box"][0] < line["box"][2] <= x2 + 6 and y1 - 12 <= line["box"][1] < line["box"][3] <= y2 + 12
                for x1, y1, x2, y2 in drawn
            ), line
            assert line["raw"] == line["label"] and all(0 <= v <= 1 for v in line["box_normalized"])
        no_model = await client.call_tool("describe", {"images": [str(path)]})
        # named as the server's model setting, not as a command-line flag the client does not have
    assert no_model.is_error and "(model none)" in no_model.content[0].text and "--" not in no_model.content[0].text
    assert no_model.meta["vlm-agent/error"] == {"code": "unsupported", "param": "model"}


@needs_rapidocr
@pytest.mark.anyio
async def test_offline_ocr_works_when_the_model_failed_to_load(page):
    path, _ = page
    settings = Settings(model=str(path.parent / "no-such-model"), allow_dirs=[str(path.parent)], out_dir=path.parent)
    async with Client(build_server(settings)) as client:
        read = await client.call_tool("ocr", {"image": str(path), "engine": "rapidocr"})
        assert not read.is_error and read.structured_content["text"] == EXPECTED
        refused = await client.call_tool("ocr", {"image": str(path)})
        assert refused.is_error and "No model directory" in refused.content[0].text
        budget = await client.call_tool("ocr", {"image": str(path), "engine": "rapidocr", "budget": 280})
        assert budget.is_error and "no visual-token budget" in budget.content[0].text


@needs_rapidocr
def test_cli_ocr_engine_rapidocr_loads_no_model(page, capsys):
    path, _ = page
    code = main(["ocr", str(path), "--engine", "rapidocr", "--model", "/nowhere", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["text"] == EXPECTED and result["engine"] == "rapidocr" and len(result["lines"]) >= 3
    assert "loading" not in captured.err


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(RapidOcr, "available", staticmethod(lambda: False))
    with pytest.raises(Unsupported, match=r"pip install 'vlm-agent\[ocr\]'"):
        RapidOcr().read(Image.new("RGB", (10, 10)))


def test_vision_without_a_model(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("RGB", (32, 32), "white").save(path)
    vision = Vision(None, ImageLoader(AccessPolicy.for_files([str(path)])))
    with pytest.raises(Unsupported, match="only ocr with engine 'rapidocr'"):
        vision.describe([str(path)])
    with pytest.raises(InvalidRequest, match="use vlm or rapidocr"):
        vision.ocr(str(path), engine="tesseract")


@needs_rapidocr
@pytest.mark.anyio
async def test_mcp_ocr_in_tiles_reads_a_line_the_seam_cuts_whole(page):
    """Two tiles across the invoice: "Total due 42.50 EUR" crosses the seam, each tile sees part of it,
    and the page reads exactly as untiled."""
    path, _ = page
    settings = Settings(model="none", allow_dirs=[str(path.parent)], out_dir=path.parent / "out")
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("ocr", {"image": str(path), "engine": "rapidocr", "tiles": "2"})
        assert not result.is_error, result.content
        data = result.structured_content
        assert data["text"] == EXPECTED
        assert [tile["box"] for tile in data["tiles"]] == [[0, 0, 473, 260], [427, 0, 900, 260]]
        assert any("joined and read as one" in note for note in data["notes"])
        assert all(0 <= line["box"][0] < line["box"][2] <= 900 for line in data["lines"])
        bad = await client.call_tool("ocr", {"image": str(path), "engine": "rapidocr", "tiles": "twelve"})
        assert bad.is_error and bad.content[0].text.startswith("tiles 'twelve' is not")


@needs_rapidocr
def test_cli_ocr_tiles_auto_leaves_a_small_image_whole(page, capsys):
    path, _ = page
    assert main(["ocr", str(path), "--engine", "rapidocr", "--tiles", "auto", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == EXPECTED and result["tiles"] is None
    assert main(["ocr", str(path), "--engine", "rapidocr", "--tiles", "0"]) == 1
    assert "tiles must be between 1 and 8" in capsys.readouterr().err


@needs_rapidocr
def test_an_upside_down_page_is_still_read(page):
    """A line the angle classifier would turn, or one read with low confidence, is read both ways."""
    path, _ = page
    reading = RapidOcr().read(Image.open(path).rotate(180))
    assert sorted(reading.text.split()) == sorted(" ".join(t for _, t in ROWS).split())


@needs_rapidocr
def test_small_text_on_a_wide_page_is_found_in_tiles_and_lost_whole():
    """Real PP-OCR on a generated page too wide for its detector: 10 px text shrunk 2x is mostly
    never found whole, while tiles find it at full size. Scored as the benchmark scores."""
    from bench.ocr_tiles import make_page, score
    from tools.jobs.tiles import rapidocr_tiled

    drawn = make_page((4000, 420), 10, "latin", seed=3)
    assert drawn is not None
    reader = RapidOcr()
    total = len("".join(drawn.text.split()))
    whole, _ = score(reader.read(drawn.image).text, drawn.text)
    tiled = rapidocr_tiled(reader, drawn.image, "auto")
    recovered, error = score(tiled.text, drawn.text)
    assert len(tiled.tiles) == 3 and tiled.reread > 0
    assert whole < 0.7 * total and recovered >= 0.95 * total and error < 0.05, (whole, recovered, total, error)


def _blank(pattern: str) -> list[bool]:
    return [c == "." for c in pattern]


@pytest.mark.parametrize(
    "pattern, height, max_aspect, expected",
    [
        # short enough: read whole
        ("xx.xx", 10, 1.0, []),
        # the widest blank run in the second half of the allowance, a word gap when wide enough
        ("xxxx.xx...xxxxxxxxx", 10, 1.2, [(8, True)]),
        # only a gap between letters there: cut in it, joined without a space
        ("xxxxxxx.xxxxxxxxxxx", 10, 1.2, [(7, False)]),
        # no blank column at all: cut at the allowance
        ("x" * 25, 10, 1.0, [(10, False), (20, False)]),
        # every part within the allowance, cut after cut
        ("xxxx..xxxx..xxxx..xxxx", 4, 2.0, [(5, True), (11, True), (17, True)]),
    ],
)
def test_cuts_split_long_lines_in_the_widest_gap(pattern, height, max_aspect, expected):
    assert cuts(_blank(pattern), height, max_aspect) == expected


@pytest.mark.parametrize(
    "size, padded",
    [
        ((900, 260), (900, 260)),     # a page: as it is
        ((120, 20), (120, 20)),       # a small word: the engine's own stretch is harmless
        ((200, 20), (200, 50)),       # past 8:1: padded as the engine pads it itself
        ((900, 120), (900, 120)),     # a line within 8:1: as it is
        ((2000, 8), (2000, 500)),     # a strip: padded to a quarter of its length, as the engine pads wide ones
        ((20000, 8), (20000, 5000)),  # so it shrinks to 2000 x 500, not to nothing
        ((1, 20000), (5000, 20000)),  # a column, padded the same way (the engine stretched it to 736 x 46000)
        ((30, 600), (150, 600)),
        ((3000, 1), (3000, 750)),
    ],
)
def test_strips_are_padded_so_the_engine_neither_fails_nor_blows_up(size, padded):
    image = Image.new("RGB", size, (10, 20, 30))
    out = strip_padded(image, 2000, 30)
    assert out.size == padded
    # The page keeps its pixels and coordinates; the padding is its own colour.
    assert out.crop((0, 0, *size)).tobytes() == image.tobytes()
    assert out.getpixel((padded[0] - 1, padded[1] - 1)) == (10, 20, 30)


@needs_rapidocr
@pytest.mark.parametrize("size", [(1, 20000), (20000, 8), (3000, 1)])
@pytest.mark.parametrize("tiles", ["off", "3"])
def test_cli_ocr_of_a_blank_strip_finds_no_text_and_does_not_fail(tmp_path, capsys, size, tiles):
    """Through the CLI: a 1 px strip made the engine fail with a traceback (tiles 3) or stretch it to
    gigabytes (tiles auto/off)."""
    path = tmp_path / "strip.png"
    Image.new("RGB", size, "white").save(path)
    assert main(["ocr", str(path), "--engine", "rapidocr", "--tiles", tiles, "--json"]) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == "" and result["lines"] == []


@needs_rapidocr
def test_a_line_on_a_strip_is_read_with_its_box_on_the_strip(tmp_path):
    font = ImageFont.load_default(size=18)
    image = Image.new("RGB", (1600, 24), "white")
    ImageDraw.Draw(image).text((10, 2), "Total due 42.50 EUR", font=font, fill="black")
    reading = RapidOcr().read(image)
    assert "42.50" in reading.text
    assert all(0 <= line.box[0] < line.box[2] <= 1600 and 0 <= line.box[1] < line.box[3] <= 24 for line in reading.lines)


@pytest.mark.parametrize("degrees", [-8.0, 0.0, 5.0, 10.0])
def test_skew_and_the_level_frame(degrees):
    import math

    angle = math.radians(degrees)
    quads = [unlevel((10, y, 400, y + 20), angle) for y in (0, 40, 80)] + [unlevel((0, 0, 10, 30), angle)]
    assert skew(quads) == pytest.approx(angle)  # the tall piece says nothing about the lines
    assert level(quads[1], angle) == pytest.approx((10, 40, 400, 60))
    # On a tilted page the upright boxes of neighbouring lines overlap; level ones do not.
    assert reading_order([level(q, angle) for q in quads[:3]]) == [[0], [1], [2]]
    assert skew([]) == 0.0


def _tilted_page(degrees: float) -> Image.Image:
    font = ImageFont.truetype("DejaVuSans.ttf", 22) if _has_dejavu() else ImageFont.load_default(size=22)
    image = Image.new("RGB", (900, 260), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(TILTED):
        x = 30
        for word in line.split():
            draw.text((x, 30 + 44 * row), word, font=font, fill="black")
            x = draw.textbbox((x, 30 + 44 * row), word, font=font)[2] + 13
    return image.rotate(degrees, expand=True, fillcolor="white", resample=Image.BICUBIC)


def _has_dejavu() -> bool:
    try:
        ImageFont.truetype("DejaVuSans.ttf", 10)
    except OSError:
        return False
    return True


TILTED = ["Quarterly report for the northern region", "Revenue grew by 12.5 percent in March"]


@needs_rapidocr
@pytest.mark.parametrize("degrees", [-8.0, 6.0])
def test_a_tilted_page_reads_line_by_line_whole_and_in_tiles(degrees):
    """A photo's tilt made the upright boxes of neighbouring lines overlap: whole, two lines were
    ordered as one row (word soup); in tiles, every piece chained into one that read as nothing."""
    from tools.jobs.tiles import rapidocr_tiled

    image = _tilted_page(degrees)
    words = [line.split() for line in TILTED]
    for reading in (RapidOcr().read(image), rapidocr_tiled(RapidOcr(), image, 2)):
        rows = reading.text.splitlines()
        assert len(rows) == 2, reading.text
        for row, expected in zip(rows, words):
            # The recogniser may drop a space at this size; the words and their order must hold.
            assert "".join(row.split()) == "".join(expected), reading.text
        assert all(0 <= l.box[0] < l.box[2] <= image.width and 0 <= l.box[1] < l.box[3] <= image.height for l in reading.lines)


TILES_REFUSED = "Argument 'tiles': Input should be 'auto', 'off' or a whole number of tiles across the long side, e.g. 3."


@needs_rapidocr
@pytest.mark.anyio
@pytest.mark.parametrize(
    "arguments, refused",
    [
        ({"tiles": True}, TILES_REFUSED),  # lax validation took true as 1: tiling silently off
        ({"tiles": 2.5}, TILES_REFUSED),
        ({"tiles": [2]}, TILES_REFUSED),
        ({"tiles": {"n": 2}}, TILES_REFUSED),
        ({"tiles": None}, None),  # unset: off
        ({"tiles": 1.0}, None),
        ({"budget": " AUTO "}, None),  # as the CLI takes it; the offline engine has no budget
        ({"budget": True}, "Argument 'budget': Input should be a budget number or 'auto'."),
        ({"budget": "lots"}, "Argument 'budget': Input should be a budget number or 'auto'."),
    ],
)
async def test_mcp_ocr_tiles_and_budget_of_odd_json_types(page, arguments, refused):
    path, _ = page
    settings = Settings(model="none", allow_dirs=[str(path.parent)], out_dir=path.parent / "out")
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("ocr", {"image": str(path), "engine": "rapidocr", **arguments})
        if refused:
            assert result.is_error and result.content[0].text == refused
        else:
            assert not result.is_error, result.content
            assert result.structured_content["text"] == EXPECTED and result.structured_content["tiles"] is None
        # and the server keeps serving
        again = await client.call_tool("ocr", {"image": str(path), "engine": "rapidocr"})
        assert not again.is_error


@needs_rapidocr
def test_cli_ocr_more_tiles_than_a_small_image_holds_is_read_whole_and_says_so(tmp_path, capsys):
    small = tmp_path / "small.png"
    Image.new("RGB", (50, 50), "white").save(small)
    assert main(["ocr", str(small), "--engine", "rapidocr", "--tiles", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tiles"] is None
    assert result["notes"] == ["asked for 8 tiles across, but the 50 px side holds 1 of at least 64 px, so it was read whole"]


def many_lines(count: int = 60) -> Image.Image:
    font = ImageFont.load_default(size=14)
    image = Image.new("RGB", (700, 20 + count * 19), "white")
    draw = ImageDraw.Draw(image)
    for row in range(count):
        draw.text((20, 10 + row * 19), f"line {row}: the quick brown fox {row * 7}", font=font, fill="black")
    return image


@needs_rapidocr
def test_pieces_recognised_in_batches_read_as_in_one_call():
    """The recogniser is given the pieces one of its own batches at a time (so a cancel can stop it in
    between); the readings are those of one call over all of them."""
    import numpy as np

    from tools.reading.offline import DEFAULT_BATCH, _recognise_parts

    reader = RapidOcr()
    image = many_lines()
    quads = reader.detect(image)
    engine = reader._load()
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    crops = engine.get_crop_img_list(bgr, [np.array(q, dtype=np.float32) for q in quads])
    assert len(crops) > DEFAULT_BATCH  # several batches
    whole, _ = engine.text_rec(crops)
    assert _recognise_parts(engine, crops) == list(whole)


@needs_rapidocr
def test_a_cancelled_reading_stops_before_its_next_tile_or_batch():
    import threading

    from tools import cancel
    from tools.jobs import tiles as tiled
    from tools.errors import Cancelled

    event = threading.Event()
    event.set()
    reader = RapidOcr()
    with cancel.cancellable(event), pytest.raises(Cancelled):
        tiled.rapidocr_tiled(reader, Image.new("RGB", (900, 260), "white"), 3)
    with cancel.cancellable(event), pytest.raises(Cancelled):
        reader.read(many_lines(3))


@needs_rapidocr
@pytest.mark.parametrize(("size", "tiles"), [((1, 200_000), "off"), ((1, 200_000), 4), ((28_285, 1), "off")])
def test_a_strip_too_long_to_search_is_refused_before_any_work(size, tiles):
    from tools.jobs import tiles as tiled

    with pytest.raises(InvalidRequest, match="too long and thin for the rapidocr engine") as error:
        tiled.rapidocr_tiled(RapidOcr(), Image.new("L", size, 255), tiles)
    assert error.value.param == "tiles"

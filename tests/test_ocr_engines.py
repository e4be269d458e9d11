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
from tools.images import AccessPolicy, ImageLoader
from tools.ocr_engines import RapidOcr, cuts, reading_order
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
    assert no_model.structured_content == {"error": "unsupported", "param": "model"}


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
    pieces = RapidOcr().pieces(Image.open(path).rotate(180))
    assert sorted(" ".join(text for _, text in pieces).split()) == sorted(" ".join(t for _, t in ROWS).split())


@needs_rapidocr
def test_small_text_on_a_wide_page_is_found_in_tiles_and_lost_whole():
    """Real PP-OCR on a generated page too wide for its detector: 10 px text shrunk 2x is mostly
    never found whole, while tiles find it at full size. Scored as the benchmark scores."""
    from bench.ocr_tiles import make_page, score
    from tools.tiled import rapidocr_tiled

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

"""Terminal rendering: half-block, kitty and sixel previews, protocol choice, result tables and status lines."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from rich.text import Text

from agent.render import (
    budgets_table,
    detections_table,
    half_blocks,
    image_protocol,
    kitty_escape,
    preview,
    sixel,
    stats_line,
    status_line,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

Cell = tuple[tuple[int, int, int], tuple[int, int, int] | None]


def image_of(rows: list[list[tuple[int, int, int]]]) -> Image.Image:
    return Image.fromarray(np.array(rows, dtype=np.uint8), "RGB")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def cells(text: Text) -> list[list[Cell]]:
    """(foreground, background) of every cell, row by row."""
    styles = [None] * len(text.plain)
    for span in text.spans:
        styles[span.start : span.end] = [span.style] * (span.end - span.start)
    rows: list[list[Cell]] = [[]]
    for char, style in zip(text.plain, styles):
        if char == "\n":
            rows.append([])
            continue
        assert char == "▀" and style is not None
        bg = tuple(style.bgcolor.triplet) if style.bgcolor else None
        rows[-1].append((tuple(style.color.triplet), bg))
    return rows


def render(renderable, width: int = 100) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


# ---------------------------------------------------------------- half blocks


def test_half_blocks_give_each_cell_its_upper_and_lower_pixel():
    text = half_blocks(image_of([[RED, GREEN, BLUE], [WHITE, RED, RED], [GREEN, GREEN, GREEN], [BLUE, BLUE, BLUE]]))
    assert cells(text) == [
        [(RED, WHITE), (GREEN, RED), (BLUE, RED)],
        [(GREEN, BLUE), (GREEN, BLUE), (GREEN, BLUE)],
    ]
    # Equal neighbours share one span: a flat background costs one span per row.
    assert len(text.spans) == 4


def test_an_odd_last_row_leaves_the_background_alone():
    assert cells(half_blocks(image_of([[RED, BLUE], [GREEN, GREEN], [WHITE, RED]]))) == [
        [(RED, GREEN), (BLUE, GREEN)],
        [(WHITE, None), (RED, None)],
    ]


@pytest.mark.parametrize(
    ("size", "limits", "cols", "rows"),
    [
        ((2, 2), (60, 24), 2, 1),  # small images are not enlarged
        ((200, 100), (60, 24), 60, 15),  # wide: width bound, 30 pixel rows
        ((100, 400), (60, 24), 12, 24),  # tall: 48 pixel rows bound
        ((4000, 3000), (60, 24), 60, 23),  # 60 x 45 pixels
        ((1000, 1), (60, 24), 60, 1),
        ((1, 1000), (60, 24), 1, 24),
        ((300, 300), (10, 100), 10, 5),
    ],
)
def test_half_blocks_keep_the_aspect_ratio_within_the_limits(size, limits, cols, rows):
    text = half_blocks(Image.new("RGB", size, RED), *limits)
    lines = text.plain.split("\n")
    assert len(lines) == rows
    assert {len(line) for line in lines} == {cols}


def test_half_blocks_take_any_mode_and_show_transparency_as_black():
    image = Image.new("RGBA", (1, 2), (255, 255, 255, 0))
    assert cells(half_blocks(image)) == [[((0, 0, 0), (0, 0, 0))]]
    assert cells(half_blocks(Image.new("L", (1, 1), 255))) == [[(WHITE, None)]]


# ---------------------------------------------------------------- kitty

KITTY = re.compile(r"\x1b_G([^;]*);([A-Za-z0-9+/=]*)\x1b\\")


def kitty_chunks(escape: str) -> list[tuple[dict[str, str], str]]:
    matches = list(KITTY.finditer(escape))
    assert "".join(m.group(0) for m in matches) == escape, "nothing but graphics escapes"
    return [(dict(kv.split("=") for kv in m.group(1).split(",")), m.group(2)) for m in matches]


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_kitty_splits_the_png_into_chunks_of_4096():
    png = png_of(noise(100, 100))
    chunks = kitty_chunks(kitty_escape(png))
    assert len(chunks) > 3
    first, *_ = chunks
    assert first[0] == {"a": "T", "f": "100", "q": "2", "m": "1"}
    assert [keys for keys, _ in chunks[1:-1]] == [{"m": "1"}] * (len(chunks) - 2)
    assert chunks[-1][0] == {"m": "0"}
    assert all(len(data) == 4096 for _, data in chunks[:-1]) and 0 < len(chunks[-1][1]) <= 4096
    assert base64.b64decode("".join(data for _, data in chunks)) == png


def test_a_small_png_fits_one_escape():
    png = png_of(Image.new("RGB", (4, 4), RED))
    [(keys, data)] = kitty_chunks(kitty_escape(png))
    assert keys == {"a": "T", "f": "100", "q": "2", "m": "0"}
    assert base64.b64decode(data) == png


# ---------------------------------------------------------------- sixel

SIXEL_TOKEN = re.compile(r"#(\d+)(?:;2;(\d+);(\d+);(\d+))?|!(\d+)([?-~])|([?-~])|(\$)|(-)")


def decode_sixel(data: str) -> np.ndarray:
    """The picture as percent RGB, -1 where nothing was drawn: just enough sixel for these tests."""
    assert data.startswith("\x1bPq") and data.endswith("\x1b\\")
    body = data[3:-2]
    raster = re.match(r'"1;1;(\d+);(\d+)', body)
    assert raster
    width, height = int(raster.group(1)), int(raster.group(2))
    out = np.full((-(-height // 6) * 6, width, 3), -1)
    palette: dict[int, tuple[int, int, int]] = {}
    x = band = 0
    color = None
    position = raster.end()
    for token in SIXEL_TOKEN.finditer(body, position):
        assert token.start() == position, f"stray {body[position:token.start()]!r}"
        position = token.end()
        select, r, g, b, count, repeated, single, back, down = token.groups()
        if select is not None:
            color = int(select)
            if r is not None:
                palette[color] = (int(r), int(g), int(b))
        elif back:
            x = 0
        elif down:
            x, band = 0, band + 1
        else:
            char, n = (repeated, int(count)) if repeated else (single, 1)
            bits = ord(char) - 63
            for row in range(6):
                if bits >> row & 1:
                    out[band * 6 + row, x : x + n] = palette[color]
            x += n
            assert x <= width
    assert position == len(body)
    assert not (out[height:] >= 0).any(), "nothing below the raster height"
    return out[:height]


def percent(image: Image.Image) -> np.ndarray:
    return (np.asarray(image, dtype=np.int64) * 100 + 127) // 255


@pytest.mark.parametrize("size", [(2, 6), (7, 13), (1, 1), (30, 5)])
def test_sixel_draws_a_two_colour_picture_exactly(size):
    width, height = size
    checker = [[RED if (x + y) % 3 else BLUE for x in range(width)] for y in range(height)]
    image = image_of(checker)
    assert (decode_sixel(sixel(image)) == percent(image)).all()


def test_sixel_keeps_up_to_256_colours_exactly():
    pixels = np.array([[(i, 255 - i, i * 7 % 256) for i in range(j * 10, j * 10 + 10)] for j in range(20)], np.uint8)
    image = Image.fromarray(pixels, "RGB")
    assert (decode_sixel(sixel(image)) == percent(image)).all()


def test_sixel_structure_of_a_photo_sized_image():
    data = sixel(noise(480, 360))
    assert data.startswith('\x1bPq"1;1;480;360#') and data.endswith("\x1b\\")
    assert data.count("-") + 1 == 60, "one band per six rows"
    assert 0 < len(re.findall(r"#\d+;2;\d+;\d+;\d+", data)) <= 256


def test_sixel_runs_are_length_coded_and_wide_images_shrink():
    assert re.search(r"#\d+!10~\x1b", sixel(Image.new("RGB", (10, 6), RED)))
    assert sixel(Image.new("RGB", (960, 100), RED)).startswith('\x1bPq"1;1;480;50#')
    assert sixel(Image.new("RGB", (100, 10), RED), max_width=50).startswith('\x1bPq"1;1;50;5#')


# ---------------------------------------------------------------- choosing and showing


@pytest.mark.parametrize(
    ("env", "is_terminal", "expected"),
    [
        ({}, False, "none"),
        ({"KITTY_WINDOW_ID": "1"}, False, "none"),
        ({"VLM_AGENT_IMAGES": "blocks"}, False, "blocks"),
        ({"VLM_AGENT_IMAGES": "none", "KITTY_WINDOW_ID": "1"}, True, "none"),
        ({"VLM_AGENT_IMAGES": " Sixel "}, True, "sixel"),
        ({"VLM_AGENT_IMAGES": "bogus", "TERM": "xterm-kitty"}, True, "kitty"),
        ({"KITTY_WINDOW_ID": "3", "TERM": "xterm-256color"}, True, "kitty"),
        ({"TERM": "xterm-kitty"}, True, "kitty"),
        ({"TERM": "xterm-ghostty", "TERM_PROGRAM": "ghostty"}, True, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, True, "kitty"),
        ({"TERM": "foot"}, True, "sixel"),
        ({"TERM": "foot-extra"}, True, "sixel"),
        ({"TERM": "xterm", "TERM_PROGRAM": "mlterm"}, True, "sixel"),
        ({"TERM": "contour"}, True, "sixel"),
        ({"TERM": "xterm-sixel"}, True, "sixel"),
        ({"TERM": "xterm-256color", "COLORTERM": "truecolor"}, True, "blocks"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, True, "blocks"),
        ({"TERM": "linux"}, True, "blocks"),
        ({"TERM": "dumb"}, True, "none"),
        ({"TERM": "tmux-256color", "TMUX": "/tmp/tmux", "KITTY_WINDOW_ID": "1"}, True, "blocks"),
        ({"TERM": "screen", "TERM_PROGRAM": "WezTerm"}, True, "blocks"),
    ],
)
def test_image_protocol(env, is_terminal, expected):
    assert image_protocol(env, is_terminal) == expected


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=80)


@pytest.mark.parametrize(
    ("protocol", "start"),
    [("kitty", "\x1b_Ga=T,f=100,q=2,m="), ("sixel", '\x1bPq"1;1;288;216#'), ("blocks", "\x1b[")],
)
def test_preview_writes_a_thumbnail(protocol, start):
    console = terminal()
    preview(console, noise(1200, 900), protocol)
    written = console.file.getvalue()
    assert written.startswith(start) and written.endswith("\n")
    if protocol == "blocks":  # 4:3 in at most a third of the 25-row screen: 8 rows of 21 columns
        assert written.count("▀") == 21 * 8 and written.count("\n") == 8


def test_preview_writes_nothing_for_none_and_refuses_unknown_protocols():
    console = terminal()
    preview(console, noise(10, 10), "none")
    assert console.file.getvalue() == ""
    with pytest.raises(ValueError, match="iterm"):
        preview(console, noise(10, 10), "iterm")


# ---------------------------------------------------------------- results


def detection(label: str, box: list[int]) -> dict:
    return {"label": label, "box": box, "box_normalized": [v / 100 for v in box], "raw": "", "seg_codes": []}


def test_detections_table_lists_boxes_in_pixels():
    result = {
        "image_size": [640, 480],
        "detections": [detection("cat", [10, 20, 300, 400]), detection("[red] mug", [5, 6, 7, 8])],
        "notes": ["never shown here"],
    }
    text = render(detections_table(result))
    assert "2 detections in 640×480" in text
    assert re.search(r"1\s*│\s*cat\s*│\s*10\s*│\s*20\s*│\s*300\s*│\s*400", text)
    assert "[red] mug" in text, "labels are not markup"
    assert "never shown" not in text


@pytest.mark.parametrize(
    ("detections", "title"),
    [([], "no detections"), ([detection("cat", [1, 2, 3, 4])], "1 detection in 640×480")],
)
def test_detections_table_title(detections, title):
    assert title in render(detections_table({"image_size": [640, 480], "detections": detections}))


def budget_run(budget: int, image_tokens: int | None, agreement: float, total_ms: float) -> dict:
    return {
        "budget": budget,
        "image_tokens": image_tokens,
        "seen_size": [budget * 2, budget],
        "prompt_tokens": budget + 20,
        "generated_tokens": 16,
        "finish_reason": "stop",
        "text": "a cat",
        "detections": None,
        "agreement": agreement,
        "timings": {"preprocess_ms": 1.0, "generate_ms": 2.0, "total_ms": total_ms},
    }


def test_budgets_table_marks_the_recommended_budget():
    result = {
        "metric": "token F1",
        "threshold": 0.9,
        "reference_budget": 1120,
        "recommended_budget": 280,
        "runs": [
            budget_run(70, None, 0.41, 512.4),
            budget_run(280, 256, 0.93, 1234.5),
            budget_run(1120, 1024, 1.0, 2345.0),
        ],
    }
    table = budgets_table(result)
    assert [str(row.style) for row in table.rows] == ["None", "bold", "None"]
    lines = render(table, width=120).splitlines()
    [marked] = [line for line in lines if "✓" in line]
    assert re.search(r"✓\s*│\s*280\s*│\s*256\s*│\s*560×280\s*│\s*1\s*│\s*–\s*│\s*–\s*│\s*1,234\s*│\s*16\s*│\s*0\.93",
                     marked)
    [unknown] = [line for line in lines if re.search(r"│\s*70\s*│", line)]
    assert re.search(r"70\s*│\s*\?\s*│", unknown) and "0.41" in unknown
    assert any("agreement = token F1 vs 1120; recommended: 280 (≥ 0.90)" in line for line in lines)
    assert not any("shared" in line for line in lines)


def test_budgets_table_shows_each_budgets_prefill_and_the_shared_decode():
    runs = [budget_run(70, 64, 0.5, 30.0), budget_run(1120, 1089, 1.0, 900.0)]
    runs[0]["timings"].update(preprocess_ms=10.0, prefill_ms=5.0, decode_ms=15.0)
    runs[1]["timings"].update(preprocess_ms=600.0, prefill_ms=285.0, decode_ms=15.0)
    result = {"metric": "token F1", "threshold": 0.9, "reference_budget": 1120, "recommended_budget": 1120,
              "runs": runs}
    lines = render(budgets_table(result), width=160).splitlines()
    [low] = [line for line in lines if re.search(r"│\s*70\s*│", line)]
    assert re.search(r"│\s*10\s*│\s*5\s*│\s*15\s*│\s*30\s*│", low)
    [high] = [line for line in lines if "✓" in line]
    assert re.search(r"│\s*600\s*│\s*285\s*│\s*15\s*│\s*900\s*│", high)
    assert any("one batch shared by every budget" in line for line in lines)


def timings(total_ms: float) -> dict:
    return {"preprocess_ms": 0.0, "generate_ms": 0.0, "total_ms": total_ms}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "gemma4 · budget 280 · 256 image tokens · 333 prompt + 16 generated tokens · 1.23 s"),
        ({"budget": None}, "gemma4 · 256 image tokens · 333 prompt + 16 generated tokens · 1.23 s"),
        (
            {"image_tokens": None},
            "gemma4 · budget 280 · image tokens unknown · 333 prompt + 16 generated tokens · 1.23 s",
        ),
        (
            {"finish_reason": "length"},
            "gemma4 · budget 280 · 256 image tokens · 333 prompt + 16 generated tokens · 1.23 s"
            " · cut at the token limit",
        ),
    ],
)
def test_stats_line(changes, expected):
    result = {
        "family": "gemma4",
        "budget": 280,
        "image_tokens": 256,
        "prompt_tokens": 333,
        "generated_tokens": 16,
        "finish_reason": "stop",
        "timings": timings(1234.0),
    } | changes
    assert stats_line(result) == expected


@pytest.mark.parametrize(
    ("window", "dropped", "expected"),
    [
        (8192, 0, "gemma-4 · gemma4 · sliding · context: 1,500 text + 548 image tokens / 8,192 (25%)"),
        (None, 0, "gemma-4 · gemma4 · sliding · context: 1,500 text + 548 image tokens"),
        (
            8192,
            3,
            "gemma-4 · gemma4 · sliding · context: 1,500 text + 548 image tokens / 8,192 (25%)"
            " · 3 older turns dropped",
        ),
        (
            4096,
            1,
            "gemma-4 · gemma4 · sliding · context: 1,500 text + 548 image tokens / 4,096 (50%)"
            " · 1 older turn dropped",
        ),
    ],
)
def test_status_line(window, dropped, expected):
    line = status_line("gemma-4", "gemma4", "sliding", 1500, 548, window, dropped)
    assert line.plain == expected
    highlighted = [line.plain[span.start : span.end] for span in line.spans if "yellow" in str(span.style)]
    assert highlighted == ([f"{dropped} older turn{'s' if dropped > 1 else ''} dropped"] if dropped else [])


@pytest.mark.parametrize(
    ("totals", "expected"),
    [
        ([1500.0, 1500.0], ["budget 70 · 64 image tokens", "budget 280 · 256 image tokens"]),
        # one batch, with a fraction of a millisecond of bookkeeping apart
        ([1500.2, 1500.6], ["budget 70 · 64 image tokens", "budget 280 · 256 image tokens"]),
        ([500.0, 1500.0], ["budget 70 · 64 image tokens · 0.50 s", "budget 280 · 256 image tokens · 1.50 s"]),
    ],
)
def test_panel_titles_name_budget_tokens_and_time(totals, expected):
    from tools.jobs.budgets import run_label, varying_timings

    # each budget's own encode and prefill, one shared decode (a serving engine reports neither: null)
    timings = [{"preprocess_ms": 1.0, "prefill_ms": None, "decode_ms": 2.0, "total_ms": t} for t in totals]
    shown = varying_timings(timings)
    assert [run_label(b, n, t, shown) for b, n, t in zip((70, 280), (64, 256), timings)] == expected


def test_a_square_preview_stays_a_dozen_rows_high():
    console = Console(file=io.StringIO(), width=120, height=50, force_terminal=True, color_system="truecolor")
    preview(console, Image.new("RGB", (512, 512), "teal"), "blocks")
    assert len(console.file.getvalue().rstrip("\n").splitlines()) == 12

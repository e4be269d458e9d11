"""Cancellation reaches the work, and plans are bounded before it starts, through raw stdio.

A real `vlm-agent serve` child reads tiles with the tiny Gemma 4 or the offline OCR engine.
``tests/injected.py`` (mode ``hold-unit``) records every unit of work (a tile encoded or
searched for text, a generation, a batch of text pieces recognised) and holds the first unit
of one kind until its call is cancelled: whatever runs after that is work a cancelled call did,
counted without measuring any time. Then the next call must be answered.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.hardening import VLM_AGENT, check_tool_error, record
from tests.injected import inject, units_of
from tests.raw import RawStdio, call, raw_stdio
from tests.test_queue_doors import data_uri
from tools.reading import tiling
from tools.reading.offline import DEFAULT_BATCH

#: the first unit waits this long for the test at most (a server left waiting would hang the suite)
WAIT_S = 120


def serve_args(folder: Path, *extra: str) -> list[str]:
    return ["--allow-dir", str(folder), "--out-dir", str(folder / "out"), *extra]


def cancel(s: RawStdio, id_: int) -> None:
    s.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id_}}).encode())


def held(talk: Path, s: RawStdio) -> None:
    deadline = time.monotonic() + WAIT_S
    while not (talk / "holding").exists():
        assert time.monotonic() < deadline, f"the call never reached its first unit; log: {s.log()[-2000:]}"
        time.sleep(0.02)


def after_cancel(talk: Path, unit: str) -> list[dict]:
    """The units of ``unit`` a cancelled call started after it was cancelled (the held one aside)."""
    return [u for u in units_of(talk) if u["unit"] == unit and u["cancelled"] and not u["held"]]


def test_a_cancelled_tiled_reading_on_the_model_stops_between_tiles(tiny_gemma4, tmp_path):
    """ocr with 8 tiles across on the tiny Gemma 4 (64 tiles), cancelled while the first tile is encoded: no
    other tile is encoded, and the next describe is answered. Before, every tile was encoded first."""
    talk = tmp_path / "talk"
    Image.new("RGB", (1024, 1024), "white").save(tmp_path / "page.png")
    with raw_stdio(["--model", str(tiny_gemma4), *serve_args(tmp_path)], env=inject(talk, "hold-unit", hold="encode")) as s:
        s.send(call(1, "ocr", {"image": str(tmp_path / "page.png"), "tiles": 8, "budget": 70, "max_new_tokens": 4}))
        held(talk, s)
        cancel(s, 1)
        s.send(call(2, "describe", {"images": [data_uri()], "budget": 70, "max_new_tokens": 2}))
        answer = s.answer(2, timeout=60)["result"]
        assert not answer.get("isError"), answer
    assert after_cancel(talk, "encode") == [] and after_cancel(talk, "generate") == [], units_of(talk)
    record(class_4=1)


def test_a_cancelled_tiled_rapidocr_reading_stops_between_tiles(tmp_path):
    """ocr with rapidocr in 8 x 6 tiles, cancelled while the first tile is searched: no other tile is searched,
    and the next reading is answered. Before, all 48 tiles were searched and their text read."""
    talk = tmp_path / "talk"
    Image.new("RGB", (4000, 3000), "white").save(tmp_path / "page.png")
    with raw_stdio(["--model", "none", *serve_args(tmp_path)], env=inject(talk, "hold-unit", hold="detect")) as s:
        s.send(call(1, "ocr", {"image": str(tmp_path / "page.png"), "engine": "rapidocr", "tiles": 8}))
        held(talk, s)
        cancel(s, 1)
        s.send(call(2, "ocr", {"image": data_uri(), "engine": "rapidocr"}))
        answer = s.answer(2, timeout=60)["result"]
        assert not answer.get("isError"), answer
    assert after_cancel(talk, "detect") == [], units_of(talk)
    record(class_4=1)


def lined_page(path: Path) -> None:
    font = ImageFont.load_default(size=14)
    image = Image.new("RGB", (1400, 1200), "white")
    draw = ImageDraw.Draw(image)
    for row in range(60):
        draw.text((20, 10 + row * 19), f"line {row} of the page, with words enough to be read in two parts " * 2,
                  font=font, fill="black")
    image.save(path)


@pytest.fixture(scope="module")
def lined(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lined") / "page.png"
    lined_page(path)
    return path


def test_a_cancelled_rapidocr_reading_stops_between_batches_of_lines(lined, tmp_path):
    """A page of 60 long lines, read whole, cancelled while its first pieces are recognised: at most one batch
    of pieces is read after the cancel. Before, every piece of the page was recognised in one call."""
    talk = tmp_path / "talk"
    with raw_stdio(["--model", "none", *serve_args(lined.parent)], env=inject(talk, "hold-unit", hold="recognise")) as s:
        s.send(call(1, "ocr", {"image": str(lined), "engine": "rapidocr"}))
        held(talk, s)
        cancel(s, 1)
        s.send(call(2, "ocr", {"image": data_uri(), "engine": "rapidocr"}))
        answer = s.answer(2, timeout=60)["result"]
        assert not answer.get("isError"), answer
    read = [u for u in units_of(talk) if u["unit"] == "recognise" and (u["held"] or u["cancelled"])]
    assert read and read[0]["held"] and sum(u["size"] for u in read) <= DEFAULT_BATCH, units_of(talk)
    record(class_4=1)


#: a PNG strip planned into far more tiles than a call may read, by either reader
STRIP = (1, 200_000)


@pytest.fixture(scope="module")
def strip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("strip") / "strip.png"
    Image.new("L", STRIP, 255).save(path)
    return path


TILE_REFUSALS = [
    # arguments, what the sentence says
    ({"engine": "rapidocr", "tiles": "auto"}, f"more than the {tiling.MAX_TILES}"),
    ({"engine": "vlm", "tiles": "auto"}, f"more than the {tiling.MAX_TILES}"),
    ({"engine": "vlm", "tiles": "auto", "budget": 70}, f"more than the {tiling.MAX_TILES}"),
    ({"engine": "rapidocr", "tiles": "off"}, "too long and thin"),
    ({"engine": "rapidocr", "tiles": 4}, "too long and thin"),
    ({"engine": "vlm", "tiles": 9}, "between 1 and 8"),
]


def test_tile_plans_past_the_cap_are_refused_before_any_work(tiny_gemma4, strip, tmp_path):
    """Before, tiles auto on this 1 x 200,000 strip planned 111 tiles for rapidocr and 141 for the model and
    set about reading them, rapidocr padded the strip to 50,000 x 200,000 px to search it whole (13,438 x
    53,750 for each of 4 tiles), and errors about tiles named no argument."""
    talk = tmp_path / "talk"
    detect = {"labels": ["cat"], "tiles": "auto"}
    with raw_stdio(["--model", str(tiny_gemma4), *serve_args(strip.parent)], env=inject(talk, "hold-unit")) as s:
        for n, (arguments, expected) in enumerate([*TILE_REFUSALS, (detect, f"more than the {tiling.MAX_TILES}")]):
            tool = "detect" if "labels" in arguments else "ocr"
            s.send(call(n, tool, {"image": str(strip), "max_new_tokens": 2, **arguments}))
            result = s.answer(n, timeout=60)["result"]
            assert result.get("isError"), (arguments, result)
            text = check_tool_error(result["content"][0]["text"])
            assert expected in text, (arguments, text)
            assert "structuredContent" not in result and result["_meta"]["vlm-agent/error"] == {"code": "invalid_request", "param": "tiles"}, result
        # Nothing was encoded, searched or generated, and the server still reads.
        assert units_of(talk) == []
        s.send(call(99, "ocr", {"image": data_uri(), "engine": "rapidocr"}))
        assert not s.answer(99, timeout=60)["result"].get("isError")
    record(class_4=1)


def test_the_command_line_refuses_a_tile_plan_past_the_cap_in_one_line(strip):
    done = subprocess.run([VLM_AGENT, "ocr", str(strip), "--engine", "rapidocr", "--tiles", "auto"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--tiles" in done.stderr and f"more than the {tiling.MAX_TILES}" in done.stderr

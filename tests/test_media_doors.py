"""PDFs and clips through the doors people and attackers use: the `vlm-agent` console script, raw
bytes on a real `vlm-agent serve` stdio child, hand-made HTTP requests, and a `vlm-agent run` script.

Every hostile file of issue 24 (tools/tiny/media.py) is refused in one line that shows nothing of
the server, and the server answers a good call right after. Cancelling a long job stops it between
pages and leaves no picture behind.
"""

from __future__ import annotations

import json
import time
from difflib import SequenceMatcher
from pathlib import Path

import pytest

from tests.conftest import HTTP_TOKEN
from tests.hardening import check_tool_error, record
from tests.injected import inject, units_of
from tools.tiny.media import page_lines, write_clip, write_pdf
from tests.raw import Calls, RawSession, RawStdio, call, raw_stdio
from tests.test_cancel_doors import cancel, held
from tests.test_cli_doors import console, error_line

#: the hostile files, the tool each is sent to, and a fragment of its refusal
HOSTILE = [
    ("encrypted.pdf", "ocr", "is encrypted with a password"),
    ("truncated.pdf", "ocr", "damaged or truncated PDF"),
    ("zero-pages.pdf", "describe", "holds no pages"),
    ("10000-pages.pdf", "ocr", "is 10,000 pages, more than the 50 one call may read"),
    ("200-inch.pdf", "describe", "200 x 200 inches"),
    ("100mp-image.pdf", "detect", "embedded image of 10,000 x 10,000 pixels"),
    ("no-frames.mp4", "describe", "holds no video frames"),
    ("100000-frames.mp4", "detect", "lasts 55.6 minutes"),
    ("8k.mp4", "describe", "over the 16-megapixel limit"),
    ("unknown-codec.mp4", "describe", "codec that cannot be decoded"),
    ("garbled.mp4", "detect", "is damaged"),
    ("hours.mp4", "describe", "lasts 5.0 hours"),
    ("10000-frames.gif", "ocr", "lasts 6.7 minutes"),
]


def arguments(tool: str, ref: str) -> dict:
    cheap = {"budget": 70, "max_new_tokens": 1}
    if tool == "describe":
        return {"images": [ref], **cheap}
    if tool == "detect":
        return {"image": ref, "labels": ["thing"], **cheap}
    return {"image": ref, **cheap}


def refusal(result: dict, name: str) -> str:
    assert result.get("isError") and "structuredContent" not in result, result
    return check_tool_error(result["content"][0]["text"], sent=name)


# ---------------------------------------------------------------- raw stdio


@pytest.fixture(scope="module")
def stdio(tiny_gemma4, media, tmp_path_factory):
    out = tmp_path_factory.mktemp("media-out")
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(media), "--out-dir", str(out), "--max-frames", "8"]
    with raw_stdio(args) as server:
        yield server, out


@pytest.mark.parametrize(("name", "tool", "fragment"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_each_hostile_file_is_refused_in_one_line_through_raw_stdio(stdio, media, name, tool, fragment):
    server, _ = stdio
    message = refusal(Calls.run(server, tool, arguments(tool, str(media / name))), name)
    assert fragment in message, message
    record(refused=1, wire_refused=1)
    # The server keeps serving: the good calls below run on the same child after every refusal.


def progress_of(server: RawStdio, id_: int, tool: str, args: dict) -> tuple[dict, list[dict]]:
    """A call with a progress token: its result and the progress notifications before it."""
    server.send(json.dumps({"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                            "params": {"name": tool, "arguments": args, "_meta": {"progressToken": f"p{id_}"}}}).encode())
    notes = []
    while True:
        message = server.read(120)
        if message.get("method") == "notifications/progress":
            notes.append(message["params"])
        elif message.get("id") == id_:
            return message["result"], notes


def test_a_pdf_is_read_page_by_page_with_progress_for_each_page(stdio, media):
    server, _ = stdio
    result, notes = progress_of(server, 9001, "ocr", {"image": f"{media / 'doc.pdf'}#pages=2-3", "budget": 70,
                                                      "max_new_tokens": 2})
    pages = result["structuredContent"]["pages"]
    assert [p["origin"]["page"] for p in pages] == [2, 3] and all(p["origin"]["dpi"] for p in pages)
    finished = [n for n in notes if n.get("total") == 2]
    assert [n["progress"] for n in finished] == [1, 2]
    assert finished[0]["message"].startswith("--- page 2 ---")
    assert "--- page 3 ---" in result["content"][0]["text"]


def test_a_clip_is_described_through_the_video_path_and_detected_frame_by_frame(stdio, media):
    server, out = stdio
    described = Calls.run(server, "describe", {"images": [str(media / "clip.webm")], "max_new_tokens": 2})
    frames = described["structuredContent"]["sources"]
    assert len(frames) == 8 and all(f["kind"] == "frame" and f["time_s"] is not None for f in frames)
    assert described["structuredContent"]["budget"] == 70  # Gemma 4's own per-frame budget for video
    result, notes = progress_of(server, 9002, "detect", {"image": f"{media / 'clip.gif'}#t=0,0.9", "labels": ["square"],
                                                         "budget": 70, "max_new_tokens": 2})
    detected = result["structuredContent"]
    assert [p["origin"]["frame"] for p in detected["parts"]] == list(range(8))
    assert [n["progress"] for n in notes if n.get("total") == 8] == list(range(1, 9))
    sheet = Path(detected["annotated_path"])
    assert sheet.parent == out and sheet.is_file()
    assert [c["type"] for c in result["content"]] == ["text", "image", "resource_link"]


def test_compare_budgets_on_one_page_and_one_frame(stdio, media):
    server, _ = stdio
    page = Calls.run(server, "compare_budgets", {"image": str(media / "doc.pdf"), "pages": "3", "budgets": [70, 140],
                                                 "max_new_tokens": 1})["structuredContent"]
    assert page["source"]["page"] == 3
    frame = Calls.run(server, "compare_budgets", {"image": f"{media / 'clip.mp4'}#t=1", "budgets": [70, 140],
                                                  "max_new_tokens": 1})["structuredContent"]
    assert frame["source"]["frame"] == 8 and frame["source"]["time_s"] == pytest.approx(1.0)
    many = Calls.run(server, "compare_budgets", {"image": str(media / "doc.pdf"), "budgets": [70, 140]})
    assert "compares one page at a time" in refusal(many, "doc.pdf")


# ---------------------------------------------------------------- cancelling


def test_a_cancelled_pdf_reading_renders_and_reads_no_further_page(media, tmp_path):
    """ocr with the offline engine on a 6-page PDF, cancelled while page 1 is searched for text: no page after it
    is rendered or searched, and the next call is answered."""
    write_pdf(media / "six.pdf", pages=6, size=(600, 300), font_px=20, lines=3)
    talk = tmp_path / "talk"
    env = inject(talk, "hold-unit", hold="detect")
    with raw_stdio(["--model", "none", "--allow-dir", str(media), "--out-dir", str(tmp_path / "out")], env=env) as s:
        s.send(call(1, "ocr", {"image": str(media / "six.pdf"), "engine": "rapidocr"}))
        held(talk, s)
        cancel(s, 1)
        # The held unit is written down once it lets go: the next call's units come after it (the offline engine
        # needs no turn at the model, so the next call could otherwise start first).
        deadline = time.monotonic() + 30
        while not any(u["held"] for u in units_of(talk)):
            assert time.monotonic() < deadline, units_of(talk)
            time.sleep(0.05)
        time.sleep(1)  # anything the cancelled call still did would be written by now
        before = units_of(talk)
        s.send(call(2, "ocr", {"image": str(media / "doc.pdf"), "engine": "rapidocr", "pages": "1"}))
        assert not s.answer(2, timeout=180)["result"].get("isError")
    units = units_of(talk)
    cancelled = [u for u in units if u["cancelled"] and not u["held"]]
    assert [u["unit"] for u in before[:2]] == ["render", "detect"] and cancelled == [], units


def test_a_cancelled_detect_on_a_clip_writes_no_contact_sheet(tiny_gemma4, media, tmp_path):
    talk = tmp_path / "talk"
    out = tmp_path / "out"
    env = inject(talk, "hold-unit", hold="generate")
    with raw_stdio(["--model", str(tiny_gemma4), "--allow-dir", str(media), "--out-dir", str(out)], env=env) as s:
        s.send(call(1, "detect", {"image": str(media / "clip.mp4"), "labels": ["square"], "max_new_tokens": 2}))
        held(talk, s)
        cancel(s, 1)
        s.send(call(2, "describe", {"images": [str(media / "clip.mp4")], "max_new_tokens": 1}))
        assert not s.answer(2, timeout=180)["result"].get("isError")
    assert [u for u in units_of(talk) if u["unit"] == "generate" and u["cancelled"] and not u["held"]] == []
    assert not out.exists() or not any(p.name.startswith("detect-") for p in out.iterdir())


# ---------------------------------------------------------------- HTTP


@pytest.mark.parametrize(("name", "tool", "fragment"), [HOSTILE[0], HOSTILE[5], HOSTILE[8], HOSTILE[12]],
                         ids=["encrypted.pdf", "100mp-image.pdf", "8k.mp4", "10000-frames.gif"])
def test_hostile_files_are_refused_over_http_too(served, media, name, tool, fragment):
    port = int(served.rsplit(":", 1)[1].split("/")[0])
    session = RawSession(port, HTTP_TOKEN).open()
    message = refusal(session.call(tool, arguments(tool, str(media / name))), name)
    assert fragment in message
    good = session.call("describe", {"images": [f"{media / 'doc.pdf'}#page=1"], "budget": 70, "max_new_tokens": 1})
    assert good["structuredContent"]["sources"][0]["page"] == 1
    record(refused=1, over_http=1, http_refused=1)


# ---------------------------------------------------------------- the command line and scripts


def similarity(read: str, drawn: str) -> float:
    """1 - difflib's error of a reading against the drawn text, spaces ignored (a reader's spacing is its own)."""
    return SequenceMatcher(None, "".join(read.split()), "".join(drawn.split()), autojunk=False).ratio()


def test_the_command_line_reads_a_five_page_pdf_offline_page_by_page(tmp_path):
    """Real OCR (PP-OCR in the rapidocr wheel) on five generated pages: each page's text is its own and reads as
    what was drawn; --progress says each page on stderr."""
    pytest.importorskip("rapidocr_onnxruntime")
    path = write_pdf(tmp_path / "five.pdf", pages=5, size=(900, 450), font_px=26, lines=5)
    proc = console("ocr", str(path), "--engine", "rapidocr", "--json", "--progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    pages = result["pages"]
    assert [p["origin"]["page"] for p in pages] == [1, 2, 3, 4, 5]
    scores = [similarity(p["text"], "\n".join(page_lines(p["origin"]["page"], 5))) for p in pages]
    assert min(scores) >= 0.95, scores
    assert [line for line in proc.stderr.splitlines() if "done" in line] == [
        f"progress: {n}/5 done: page {n}" for n in range(1, 6)
    ]


@pytest.mark.parametrize("family", ["gemma4", "qwen3_vl"])
def test_the_command_line_describes_a_clip_through_the_family_s_video_path(request, media, family):
    checkpoint = request.getfixturevalue(f"tiny_{family}")
    proc = console("describe", str(media / "clip.mp4"), "--model", str(checkpoint), "--json", "--max-new-tokens", "2",
                   "--max-frames", "6")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert [s["frame"] for s in result["sources"]] == [1, 4, 6, 9, 12, 14]
    assert result["image_tokens"] > 0 and result["family"] == family


def test_the_command_line_refuses_a_clip_for_paligemma_before_loading_it(tiny_paligemma, media):
    proc = console("describe", str(media / "clip.mp4"), "--model", str(tiny_paligemma))
    line = error_line(proc)
    assert "PaliGemma models cannot describe a video clip" in line and "loading" not in proc.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["10000-pages.pdf"], "is 10,000 pages, more than the 50 one call may read; choose pages, for example --pages 1-50"),
        (["doc.pdf", "--max-pages", "2"], "is 3 pages, more than the 2 one call may read"),
        (["doc.pdf", "--pages", "7"], "--pages asks for page 7, and the document has 3 pages"),
        (["doc.pdf", "--max-megapixels", "0.1"], "even at 72 dpi"),
        (["hours.mp4"], "lasts 5.0 hours"),
        (["doc.pdf", "--max-video-seconds", "-1"], "--max-video-seconds must be above 0"),
    ],
)
def test_the_command_line_refuses_past_its_limit_flags_in_one_line(media, argv, said):
    line = error_line(console("ocr", str(media / argv[0]), *argv[1:], "--engine", "rapidocr"))
    assert said in line, line


def test_a_script_turn_reads_chosen_pages_of_a_pdf(tiny_gemma4, media, tmp_path):
    script = tmp_path / "pages.yaml"
    script.write_text(
        f"- user: read it\n  images: [{media / 'doc.pdf'}]\n  tool: ocr\n"
        "  arguments: {pages: '2', max_new_tokens: 2, budget: 70}\n"
        f"- user: what moves?\n  images: [{media / 'clip.gif'}]\n  tool: describe\n"
        "  arguments: {max_new_tokens: 2}\n"
    )
    proc = console("run", str(script), "--model", str(tiny_gemma4), "--max-frames", "4",
                   env={"VLM_AGENT_HOME": str(tmp_path / "home")}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = json.loads(proc.stdout)["turns"]
    assert [p["origin"]["page"] for p in first["result"]["pages"]] == [2]
    assert len(second["result"]["sources"]) == 4


def test_the_chat_reads_a_pdf_named_with_at_page_by_page(tiny_gemma4, media, tmp_path):
    """`vlm-agent chat` in a pty: a message naming @doc.pdf sends the PDF; its pages come back as they are read."""
    from tests.pty_chat import PtyChat
    from tests.test_chat_terminal import ready

    with PtyChat(["--model", str(tiny_gemma4), "--max-new-tokens", "2", "--budget", "70"], tmp_path / "home") as chat:
        ready(chat)
        said = chat.line(f"read the text of @{media / 'doc.pdf'}", rb"--- page 3 ---", limit=180)
        assert b"--- page 1 ---" in said and b"--- page 2 ---" in said
        chat.line("/quit", rb"bye")
        assert chat.wait(30) == 0, chat.tail()
    assert chat.forbidden() == [], chat.forbidden()


def test_the_chat_describes_a_clip_named_with_at_through_the_video_path(tiny_gemma4, tmp_path):
    """`vlm-agent chat` in a pty: a message naming @clip.mp4 sends the clip, and the answer says which frames it saw."""
    from tests.pty_chat import PtyChat
    from tests.test_chat_terminal import ready

    clip = write_clip(tmp_path / "clip.mp4", 8)
    argv = ["--model", str(tiny_gemma4), "--max-new-tokens", "2", "--budget", "70", "--max-frames", "4"]
    with PtyChat(argv, tmp_path / "home") as chat:
        ready(chat)
        said = chat.line(f"what happens in @{clip}", rb"4 of its 8 frames, evenly spaced", limit=180)
        assert b"'clip.mp4': 4 of its 8 frames" in said  # the file by its name, not as a data: URI
        assert b"describe(" in said
        chat.line("/quit", rb"bye")
        assert chat.wait(30) == 0, chat.tail()
    assert chat.forbidden() == [], chat.forbidden()

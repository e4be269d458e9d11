"""The terminal-safe path (agent/terminal.py): what it removes, what it keeps, and how links are shown."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rich.console import Console
from rich.table import Table

from agent.terminal import TerminalConsole, clean, escape, markdown, text


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("plain text, ünïcode 漢字 ✓", "plain text, ünïcode 漢字 ✓"),
        ("tab\tand\nline", "tab\tand\nline"),
        ("a\r\nb\rc", "a\nb\nc"),  # a carriage return would let text overwrite its own line
        ("a\x00b", "ab"),
        ("x\x1b]52;c;cGF5bG9hZA==\x07y", "xy"),  # OSC 52 clipboard write, BEL-terminated
        ("x\x1b]52;c;cGF5bG9hZA==\x1b\\y", "xy"),  # ... ST-terminated
        ("x\x1b[2Jy\x1b[31;1mz\x1b[0m", "xyz"),  # erase screen, colours
        ("\x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\", "click"),  # OSC 8 link: the text stays
        ("x\x1bcy", "xy"),  # ESC c resets the terminal
        ("x\x9b2Jy", "xy"),  # 8-bit CSI
        ("x\x9d52;c;AA\x9cy", "xy"),  # 8-bit OSC with 8-bit ST
        ("x\x1bP+q544e\x1b\\y", "xy"),  # DCS (a terminal query)
        ("x\x1b_Ga=T;AAAA\x1b\\y", "xy"),  # APC (kitty graphics)
        ("x\x1b]52;c;unterminated", "x]52;c;unterminated"),  # no terminator: only the ESC goes
        ("abc\u202edcba\u202c", "abcdcba"),  # bidi override and its end
        ("\u2066isolate\u2069", "isolate"),
        ("x\x85y\x07z\x7f", "xyz"),  # NEL, BEL, DEL
        ("lone \ud800 surrogate", "lone \ufffd surrogate"),
    ],
    ids=lambda value: repr(value)[:30],
)
def test_clean_leaves_only_text_a_terminal_shows(raw, shown):
    assert clean(raw) == shown


@pytest.mark.parametrize("raw", ["[/x]", "[link=mailto:a@b.c]x.png", "see [bold]this[/bold]", "trailing \\"])
def test_escaped_markup_prints_as_written(raw):
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(f"[dim]{escape(raw)}[/]")
    console.print(text(raw))
    assert console.file.getvalue() == f"{raw}\n{raw}\n"


def test_a_markdown_link_shows_the_address_it_opens():
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system="truecolor")
    console.print(markdown("See [https://bank.example/login](http://127.0.0.1:9/phish)"))
    shown = console.file.getvalue()
    assert "https://bank.example/login" in shown and "http://127.0.0.1:9/phish" in shown
    assert "\x1b]8;" not in shown  # no live link


def test_the_terminal_console_cleans_what_was_built_without_clean():
    """Text, tables and plain strings that skipped ``clean`` are cleaned on their way out."""
    from rich.text import Text

    console = TerminalConsole(file=io.StringIO(), width=200, force_terminal=True, color_system="truecolor")
    table = Table("label")
    table.add_row(Text("cat\x1b]52;c;AA\x07\u202e"))
    console.print(table)
    console.print("plain \x1b[2J string", markup=False)
    console.print(Text("text \x00\x9b31m"), style="bold")
    written = console.file.getvalue()
    for raw in ("\x1b]52", "\x1b[2J", "\x00", "\x9b", "\u202e"):
        assert raw not in written
    assert "cat" in written and "plain  string" in written


#: an engine's answer: the core removes its controls but keeps the bidi override, which is text
ENGINE_ANSWER = "a\x00b\x1b]52;c;cGF5\x07c \u202eevil\u202c [/x]"


@contextmanager
def hostile_engine() -> Iterator[str]:
    """An OpenAI-compatible engine on loopback whose every answer is ``ENGINE_ANSWER``; yields its base URL."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Engine(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # the model list
            self.send(json.dumps({"object": "list", "data": [{"id": "m"}]}).encode(), "application/json")

        def do_POST(self) -> None:  # a streamed chat completion
            self.rfile.read(int(self.headers["Content-Length"]))
            events = [{"choices": [{"index": 0, "delta": {"content": ENGINE_ANSWER}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}]
            body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            self.send(body.encode(), "text/event-stream")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_line_prints_an_engines_answer_inert_and_its_json_exact(tmp_path):
    """The CLI's plain output, through the console script: `describe` on a hostile engine."""
    import json
    import os
    import subprocess

    from tests.conftest import sample_image
    from tests.hardening import VLM_AGENT, record

    sample_image(32, 32).save(tmp_path / "p.png")
    with hostile_engine() as url:
        def describe(*extra: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [VLM_AGENT, "describe", "p.png", "--backend", "openai", "--base-url", url, "--model", "m", *extra],
                capture_output=True, cwd=tmp_path, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )

        plain, as_json = describe(), describe("--json")
    assert plain.returncode == 0 and as_json.returncode == 0, plain.stderr + as_json.stderr
    assert plain.stdout == b"ab]52;c;cGF5c evil [/x]\n"  # no bidi override, the markup as written
    # --json carries the answer as the core gave it: JSON escapes what it must itself
    assert json.loads(as_json.stdout)["text"] == "ab]52;c;cGF5c \u202eevil\u202c [/x]"
    record(class_17=1)


def test_json_output_stays_exact_and_plain_output_is_cleaned(capsys):
    import json

    from agent.cli import print_result
    from tools.results import DescribeResult, Timings

    answer = "see [/x] \u202eevil\u202c \x1b]52;c;AA\x07"
    result = DescribeResult(text=answer, model="m", family="gemma4", budget=None, image_ids=[], image_tokens=None,
                            prompt_tokens=1, generated_tokens=1, finish_reason="stop", timings=Timings(total_ms=1.0),
                            notes=[f"note {answer}"])
    print_result(result, as_json=True)
    assert json.loads(capsys.readouterr().out)["text"] == answer
    print_result(result, as_json=False)
    shown = capsys.readouterr()
    assert shown.out == "see [/x] evil \n"
    assert "note see [/x] evil" in shown.err and "\x1b" not in shown.err and "\u202e" not in shown.err

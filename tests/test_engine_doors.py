"""A hostile OpenAI-compatible engine on loopback, met through the real doors.

A real `vlm-agent serve --backend openai` child, spoken to in raw stdio lines, and the
`vlm-agent` console script, both pointed at an engine this test serves. The engine answers
each request by the case named in its prompt (``case:NAME``): endless streams, bodies of
hundreds of megabytes, redirects, web pages, events that are not chunks, absurd usage. Each
must end in a bounded read and, where it is no answer, a typed one-line error; the engine
counts what it could send and sees when the server hangs up.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import sample_image
from tests.hardening import VLM_AGENT, check_tool_error, record
from tests.raw import RawStdio, call, raw_stdio
from tests.test_queue_doors import data_uri, loopback

#: the longest the engine keeps any answer going, whatever the test does
HOLD_CAP_S = 60
#: what the hostile bodies claim, and send if nobody stops reading
HUGE = 300 * 2**20
#: a body read whole would reach HUGE; a bounded read stops near the cap, buffers included
READ_BOUND = 64 * 2**20
CASE = re.compile(rb"case:([a-z0-9-]+)")


def event(data: object) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def delta(text: str) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": text}}]})


def completion(usage: dict | None = None) -> bytes:
    usage = usage or {"prompt_tokens": 10, "completion_tokens": 2}
    return b"".join([
        event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        delta("A "), delta("square."),
        event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        event({"choices": [], "usage": usage}), event("[DONE]"),
    ])


class Hostile:
    """What the engine saw: bytes it sent per case, hang-ups it noticed, paths it was asked for."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = defaultdict(int)
        self.dropped: dict[str, threading.Event] = defaultdict(threading.Event)
        self.started: dict[str, threading.Event] = defaultdict(threading.Event)
        self.paths: list[str] = []
        self.stop = threading.Event()


def hostile_engine(seen: Hostile):
    class Engine(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.paths.append(self.path)
            self.head(200, "application/json")
            self.wfile.write(json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode())

        def do_POST(self) -> None:  # noqa: N802
            self.paths.append(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            found = CASE.search(body)
            case = found.group(1).decode() if found else "ok"
            seen.started[case].set()
            try:
                getattr(self, "case_" + case.replace("-", "_"))(case)
            except OSError:
                seen.dropped[case].set()

        @property
        def paths(self) -> list[str]:
            return seen.paths

        def head(self, status: int, ctype: str, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()

        def send(self, case: str, data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            # What this request got out; the last request of a case is the one its test looks at.
            self.count = getattr(self, "count", 0) + len(data)
            seen.sent[case] = self.count

        def endless(self, case: str, piece: bytes, pause: float) -> None:
            self.head(200, "text/event-stream")
            self.send(case, event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
            deadline = time.monotonic() + HOLD_CAP_S
            while time.monotonic() < deadline and not seen.stop.is_set():
                self.send(case, piece)
                time.sleep(pause)

        def huge(self, case: str, status: int, start: bytes) -> None:
            self.head(status, "application/json", Content_Length=str(HUGE))
            self.send(case, start)
            block = b"a" * 2**20
            while self.count + len(block) <= HUGE and not seen.stop.is_set():
                self.send(case, block)

        def case_ok(self, case: str) -> None:
            self.head(200, "text/event-stream")
            self.send(case, completion())

        def case_endless(self, case: str) -> None:
            self.endless(case, delta("a "), 0.002)

        def case_slow_endless(self, case: str) -> None:
            self.endless(case, delta("a "), 0.02)

        def case_endless_nothing(self, case: str) -> None:
            self.endless(case, event({"choices": []}) * 64, 0.001)

        def case_huge_json(self, case: str) -> None:
            self.huge(case, 200, b'{"choices": [{"index": 0, "message": {"content": "')

        def case_huge_error(self, case: str) -> None:
            self.huge(case, 500, b'{"error": {"message": "')

        def redirect(self, case: str, status: int) -> None:
            page = b"<html><body><a href='/trap'>moved</a></body></html>"
            self.head(status, "text/html", Location="/trap", Content_Length=str(len(page)))
            self.send(case, page)

        def case_redirect_302(self, case: str) -> None:
            self.redirect(case, 302)

        def case_redirect_307(self, case: str) -> None:
            self.redirect(case, 307)

        def case_html(self, case: str) -> None:
            self.head(200, "text/html; charset=utf-8")
            self.send(case, b"<!doctype html><html><body><p>Sign in to continue</p></body></html>")

        def case_hello(self, case: str) -> None:
            self.head(200, "text/event-stream")
            self.send(case, event('"hello"') + event("[DONE]"))

        def case_usage_huge(self, case: str) -> None:
            self.head(200, "text/event-stream")
            self.send(case, completion({"prompt_tokens": 10, "completion_tokens": 1e308}))

        def case_usage_negative(self, case: str) -> None:
            self.head(200, "text/event-stream")
            self.send(case, completion({"prompt_tokens": 10, "completion_tokens": -3}))

        def case_usage_fraction(self, case: str) -> None:
            self.head(200, "text/event-stream")
            self.send(case, completion({"prompt_tokens": 10.5, "completion_tokens": 2}))

    return Engine


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[str, Hostile]]:
    seen = Hostile()
    with loopback(hostile_engine(seen)) as port:
        try:
            yield f"http://127.0.0.1:{port}/v1", seen
        finally:
            seen.stop.set()


def serve_args(base_url: str, *extra: str) -> list[str]:
    return ["--backend", "openai", "--base-url", base_url, "--api-model", "tiny", *extra]


@pytest.fixture(scope="module")
def server(engine) -> Iterator[RawStdio]:
    base_url, _ = engine
    with raw_stdio(serve_args(base_url, "--api-timeout", str(HOLD_CAP_S * 2))) as s:
        yield s


def describe(s: RawStdio, id_: int, case: str, max_new_tokens: int = 8, timeout: float = 30) -> dict:
    s.send(call(id_, "describe", {"images": [data_uri()], "prompt": f"case:{case}", "max_new_tokens": max_new_tokens}))
    return s.answer(id_, timeout=timeout)["result"]


def still_serving(s: RawStdio, id_: int) -> None:
    after = describe(s, id_, "ok")
    assert not after.get("isError"), after
    assert after["structuredContent"]["text"] == "A square."


NON_ANSWERS = {
    # case: what the one sentence must say
    "huge-json": "larger than",
    "huge-error": "HTTP 500",
    "redirect-302": "redirect",
    "redirect-307": "redirect",
    "html": "text/html",
    "hello": "malformed",
    "endless-nothing": "larger than",
    "usage-huge": "token usage",
    "usage-negative": "token usage",
    "usage-fraction": "token usage",
}


@pytest.mark.parametrize("case", list(NON_ANSWERS))
def test_a_non_answer_from_the_engine_is_a_typed_one_line_error(server, engine, case):
    """Before, a redirect, a web page or ``data: "hello"`` came back as an empty success, absurd usage as an
    error about an argument nobody sent (generated_tokens), and whole bodies of 300 MB were read."""
    _, seen = engine
    number = 10 + list(NON_ANSWERS).index(case) * 2
    result = describe(server, number, case)
    assert result.get("isError"), result
    text = check_tool_error(result["content"][0]["text"])
    assert NON_ANSWERS[case] in text, text
    structured = result["_meta"]["vlm-agent/error"]
    assert structured["code"] in ("engine_error", "engine_unavailable"), structured
    # Only an argument the caller sent may be named.
    assert structured.get("param") in (None, "base_url", "api_timeout", "max_concurrency"), structured
    assert "generated_tokens" not in text
    assert seen.sent[case] < READ_BOUND, seen.sent[case]
    assert "/v1/trap" not in seen.paths and "/trap" not in seen.paths
    still_serving(server, number + 1)
    record(engine_answers=1)


def test_an_endless_stream_is_read_only_to_max_new_tokens(server, engine):
    """max_new_tokens 8 against an engine that never stops: 8 pieces, cut, said so, and the engine sees the
    hang-up. Before, the stream was read until the engine gave up."""
    _, seen = engine
    result = describe(server, 100, "endless")
    assert not result.get("isError"), result
    structured = result["structuredContent"]
    assert structured["text"] == " ".join(["a"] * 8)
    assert structured["finish_reason"] == "length"
    assert any("max_new_tokens=8" in note for note in structured["notes"]), structured["notes"]
    assert seen.dropped["endless"].wait(10)
    still_serving(server, 101)
    record(engine_answers=1)


def test_a_cancelled_stream_is_hung_up_at_once_and_frees_the_engine(engine):
    """--max-concurrency 1: a streaming describe is cancelled; the engine sees the hang-up and the next call
    gets the one slot. Before, the stream was read on (here: until the engine's minute ran out), and the
    engine saw the hang-up only when the server exited."""
    base_url, seen = engine
    with raw_stdio(serve_args(base_url, "--max-concurrency", "1")) as s:
        message = json.loads(call(1, "describe", {"images": [data_uri()], "prompt": "case:slow-endless",
                                                  "max_new_tokens": 8192}))
        message["params"]["_meta"] = {"progressToken": "p1"}
        s.send(json.dumps(message).encode())
        # The answer is streaming: its first pieces came back as progress (not the wait for the load),
        # several to a notification when they come faster than notifications go out.
        while not re.fullmatch(r"(a )+", (s.read(30).get("params") or {}).get("message") or ""):
            pass
        s.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}).encode())
        assert seen.dropped["slow-endless"].wait(10), "the engine never saw the hang-up"
        s.send(call(2, "describe", {"images": [data_uri()], "prompt": "case:ok", "max_new_tokens": 8}))
        after = s.answer(2, timeout=30)["result"]
        assert not after.get("isError"), after
    record(class_4=1)


@pytest.mark.parametrize(("case", "expected"), [("redirect-302", "redirect"), ("usage-huge", "token usage"),
                                                ("huge-json", "larger than")])
def test_the_command_line_refuses_non_answers_in_one_line(engine, tmp_path: Path, case, expected):
    base_url, seen = engine
    image = tmp_path / "square.png"
    sample_image().save(image)
    done = subprocess.run(
        [VLM_AGENT, "describe", str(image), "--prompt", f"case:{case}", "--max-new-tokens", "8",
         *serve_args(base_url)], capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], done.stderr
    check_tool_error(lines[0].removeprefix("error: "))
    assert "Traceback" not in done.stderr and not done.stdout
    record(engine_answers=1)

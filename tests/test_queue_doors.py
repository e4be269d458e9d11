"""Class 4 of the transport campaign, cancellation and queues, through raw stdio.

A real `vlm-agent serve` child, spoken to in raw lines. Its "model" is an OpenAI-compatible
engine that this test serves on loopback: an engine slow to answer its model list is a model
slow to load, held exactly as long as the test needs, and no weights are involved. Images come
from a loopback server that sends them slowly.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import sample_image
from tests.hardening import check_tool_error, record
from tests.injected import inject
from tests.raw import RawStdio, call, raw_stdio

#: the longest any loopback server here holds a connection, whatever the test does
HOLD_CAP_S = 60
#: how long a slow image takes to arrive (under the 10 s download limit, so it is taken)
DRIP_S = 6.0
#: history images, each from the slow server; before the fix a cancelled call fetched them all
HISTORY_URLS = 4


def png_bytes(width: int = 48, height: int = 32) -> bytes:
    out = io.BytesIO()
    sample_image(width, height).save(out, "PNG")
    return out.getvalue()


def data_uri() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def loopback(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def engine(release: threading.Event) -> Iterator[str]:
    """An engine whose model list waits for ``release`` (the model's load), and which refuses to generate."""

    class Engine(Quiet):
        def do_GET(self) -> None:  # noqa: N802
            release.wait(HOLD_CAP_S)
            self.reply(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.reply(503, {"error": {"message": "no capacity in this test engine"}})

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with loopback(Engine) as port:
        try:
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            release.set()


def serve_args(base_url: str, max_queue: int, *extra: str) -> list[str]:
    return ["--backend", "openai", "--base-url", base_url, "--api-model", "tiny", "--max-queue", str(max_queue), *extra]


def is_busy(answer: dict) -> bool:
    result = answer.get("result", {})
    return bool(result.get("isError")) and ((result.get("_meta") or {}).get("vlm-agent/error") or {}).get("code") == "busy"


def describe(id_: int, progress: bool = False, **arguments: object) -> bytes:
    message = json.loads(call(id_, "describe", {"images": [data_uri()], "max_new_tokens": 4, **arguments}))
    if progress:
        message["params"]["_meta"] = {"progressToken": f"p{id_}"}
    return json.dumps(message).encode()


def answers(server: RawStdio, ids: set[int], timeout: float, count: int | None = None) -> dict[int, dict]:
    """The first ``count`` (default: all) responses to ``ids``, in any order, skipping notifications;
    fails when they do not come in time."""
    got: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(got) < (len(ids) if count is None else count):
        message = server.read(max(0.1, deadline - time.monotonic()))
        if message.get("id") in ids and ("result" in message or "error" in message):
            got[message["id"]] = message
    return got


# -- (b) calls waiting for the model's load ------------------------------------------------


def test_calls_waiting_for_the_load_count_against_the_queue():
    """8 calls while the model loads, against --max-queue 3: 5 are told busy at once, before the load ends."""
    release = threading.Event()
    with engine(release) as base_url, raw_stdio(serve_args(base_url, 3)) as s:
        for n in range(1, 9):
            s.send(describe(n))
        # Before the fix none of them answered before the load ended (the engine holds it for a minute).
        busy = answers(s, set(range(1, 9)), timeout=30, count=5)
        assert all(is_busy(a) for a in busy.values()), busy
        for answer in busy.values():
            check_tool_error(answer["result"]["content"][0]["text"])
        waiting = set(range(1, 9)) - set(busy)
        release.set()
        # The three that waited each get their own answer (the test engine refuses to generate).
        after = answers(s, waiting, timeout=60)
        assert not any(is_busy(a) for a in after.values()), after
        assert all(a["result"]["isError"] for a in after.values()), after
    record(class_4=1, busy=len(busy))


def test_offline_ocr_answers_while_a_crowd_waits_for_the_load():
    """45 calls wait for the load (more than the event loop's 40 worker threads); ocr with rapidocr still answers."""
    release = threading.Event()
    crowd = set(range(1, 46))
    with engine(release) as base_url, raw_stdio(serve_args(base_url, 64)) as s:
        for n in sorted(crowd):
            s.send(describe(n, progress=True))
        # Each says it waits for the load (a progress notification) before the offline call is sent.
        loading: set[str] = set()
        deadline = time.monotonic() + 60
        while len(loading) < len(crowd):
            message = s.read(max(0.1, deadline - time.monotonic()))
            assert "id" not in message, message  # nobody was answered: the load has not ended
            if message.get("method") == "notifications/progress":
                loading.add(message["params"]["progressToken"])
        s.send(call(100, "ocr", {"image": data_uri(), "engine": "rapidocr"}))
        # Before the fix the crowd held every worker thread and this waited for the load's end.
        ocr = s.answer(100, timeout=40)
        assert not release.is_set()
        assert not ocr["result"].get("isError"), ocr
        assert ocr["result"]["structuredContent"]["engine"] == "rapidocr"
        release.set()
        after = answers(s, crowd, timeout=90)
        assert not any(is_busy(a) for a in after.values())
    record(class_4=1)


# -- (a) a cancelled call during a slow download --------------------------------------------


@contextmanager
def slow_images(started: threading.Event, dropped: threading.Event, stop: threading.Event) -> Iterator[tuple[int, list[str]]]:
    """PNGs sent a piece at a time over ``DRIP_S``; ``started`` when the first request comes,
    ``dropped`` when a client hangs up mid-image."""
    body = png_bytes()
    requested: list[str] = []
    pieces = 12

    class Slow(Quiet):
        def do_GET(self) -> None:  # noqa: N802
            requested.append(self.path)
            started.set()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            size = -(-len(body) // pieces)
            try:
                for at in range(0, len(body), size):
                    self.wfile.write(body[at:at + size])
                    self.wfile.flush()
                    if stop.wait(DRIP_S / pieces):
                        return
            except OSError:
                dropped.set()

    with loopback(Slow) as port:
        try:
            yield port, requested
        finally:
            stop.set()


def test_a_cancelled_call_frees_its_place_during_a_slow_download():
    """--max-queue 1: a describe whose history images download slowly is cancelled; its place comes back at once."""
    started, dropped, stop = threading.Event(), threading.Event(), threading.Event()
    loaded = threading.Event()
    loaded.set()
    with engine(loaded) as base_url, slow_images(started, dropped, stop) as (port, requested), raw_stdio(
        serve_args(base_url, 1, "--allow-private-urls")
    ) as s:
        history = [{"role": "user", "content": "look", "images": [f"http://127.0.0.1:{port}/{n}.png" for n in range(HISTORY_URLS)]},
                   {"role": "assistant", "content": "seen"}]
        s.send(describe(1, history=history, prompt="and now?"))
        assert started.wait(30), s.log()[-2000:]
        s.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}).encode())
        # The one place comes back within a few polls; before the fix it was held while every
        # history image downloaded (HISTORY_URLS x DRIP_S).
        deadline = time.monotonic() + 2 * DRIP_S
        n, told_busy = 100, 0
        while True:
            n += 1
            s.send(call(n, "ocr", {"image": data_uri(), "engine": "rapidocr"}))
            answer = s.answer(n, timeout=40)
            if not is_busy(answer):
                break
            told_busy += 1
            assert time.monotonic() < deadline, f"the cancelled call still holds the queue after {told_busy} tries"
            time.sleep(0.1)
        assert not answer["result"].get("isError"), answer
        # The download itself stopped: the server hung up mid-image and asked for no other image.
        assert dropped.wait(10)
        assert requested == ["/0.png"], requested
        # The server keeps serving.
        s.send(call(999, "ocr", {"image": data_uri(), "engine": "rapidocr"}))
        assert not s.answer(999, timeout=40)["result"].get("isError")
    record(class_4=1)


# -- (c) calls queued behind a loaded, busy model ----------------------------------------------


def test_offline_ocr_answers_while_a_crowd_waits_for_a_busy_model(tiny_gemma4, tmp_path):
    """One describe holds the model (its generation is held at a gate); 45 more queue behind it,
    more than the event loop's 40 worker threads; ocr with rapidocr still answers."""
    talk = tmp_path / "gates"
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"),
            "--max-queue", "64"]
    crowd = set(range(2, 47))
    with raw_stdio(args, env=inject(talk, "hold-generate")) as s:
        s.send(describe(1, budget=70))
        deadline = time.monotonic() + 120
        while not (talk / "generating").exists():
            time.sleep(0.02)
            assert time.monotonic() < deadline, f"the first call never reached the model; log: {s.log()[-2000:]}"
        for n in sorted(crowd):
            s.send(describe(n, budget=70))
        s.send(call(100, "ocr", {"image": data_uri(), "engine": "rapidocr"}))
        # Before the fix the crowd held every worker thread, each waiting for the model's lock,
        # and this waited for the held generation's end.
        ocr = s.answer(100, timeout=40)
        assert not (talk / "release").exists()
        assert not ocr["result"].get("isError"), ocr
        assert ocr["result"]["structuredContent"]["engine"] == "rapidocr"
        (talk / "release").write_text("")
        after = answers(s, crowd | {1}, timeout=180)
        assert not any(is_busy(a) or a["result"].get("isError") for a in after.values()), after
    record(class_4=1)


# -- (d) a slow image download does not hold the model ----------------------------------------

#: the most the image server holds a download half sent (under the 10 s download limit)
HALF_HOLD_S = 8.0


def test_a_slow_image_download_does_not_hold_the_model_from_other_calls(tiny_gemma4, tmp_path):
    """A describe whose URL image arrives slowly fetches it before its turn at the model: a
    describe sent meanwhile is answered while that download is still half done."""
    body = png_bytes()
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    class Halting(Quiet):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            started.set()
            release.wait(HALF_HOLD_S)
            try:
                self.wfile.write(body[len(body) // 2:])
            finally:
                done.set()

    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"),
            "--allow-private-urls"]
    with loopback(Halting) as port, raw_stdio(args) as s:
        s.send(call(1, "describe", {"images": [f"http://127.0.0.1:{port}/slow.png"], "max_new_tokens": 2, "budget": 70}))
        assert started.wait(120), s.log()[-2000:]
        s.send(describe(2, budget=70, max_new_tokens=2))
        # Before, the first call read its images holding its turn, so this waited for the download.
        other = s.answer(2, timeout=60)
        assert not done.is_set(), "the other call was answered only once the slow download had finished"
        assert not other["result"].get("isError"), other
        release.set()
        first = s.answer(1, timeout=60)
        assert not first["result"].get("isError"), first
        assert first["result"]["structuredContent"]["image_ids"], first
    record(class_4=1)

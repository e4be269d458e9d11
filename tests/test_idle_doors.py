"""Class 16 of the transport campaign: clients that go quiet or hang up lock nobody out.

Through hand-made HTTP against a real `vlm-agent serve --transport http`. A session is idle
when it has sent no request for ``--session-idle-s``, whatever streams it holds open: two
clients holding only their GET streams make way for a new client, while a client that keeps
pinging keeps its session. A client that hangs up mid-call gives back its place in the queue
at once, so the next callers wait for the model instead of being told it is busy.
"""

from __future__ import annotations

import socket
import threading
import time

from tests.conftest import sample_image
from tests.hardening import record, serve_http
from tests.injected import inject
from tests.raw import INIT, RawSession, raw_http

#: how long a test waits for what must happen; a failure bound, not a target
BOUND_S = 30.0


def http_port(served) -> int:
    return int(served.url.rsplit(":", 1)[1].split("/")[0])


def get_stream(port: int, session: RawSession) -> socket.socket:
    """The session's standalone GET stream, opened and left open (nothing more is read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    sock.sendall(
        f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {session.id}\r\n"
        f"Mcp-Protocol-Version: {INIT['protocolVersion']}\r\n\r\n".encode()
    )
    assert sock.recv(64).startswith(b"HTTP/1.1 200"), "the GET stream was not opened"
    return sock


def initialize(port: int) -> tuple[int, str | None]:
    fresh = RawSession(port)
    status, headers, _ = raw_http(port, fresh.post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT},
                                                   session=False))
    return status, headers.get("mcp-session-id")


def ping(port: int, session: RawSession) -> int:
    return raw_http(port, session.post({"jsonrpc": "2.0", "id": 99, "method": "ping"}))[0]


def test_sessions_idle_by_requests_end_though_their_get_streams_stay_open(tmp_path):
    """--max-sessions 2 --session-idle-s 4: B holds only its GET stream, A pings while holding one.
    A new client gets in once B has sent nothing for 4 s; A keeps its session. Before, the open
    GET streams kept both sessions forever and every new client was told to retry."""
    args = ["--model", "none", "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"),
            "--max-sessions", "2", "--session-idle-s", "4"]
    with serve_http(args) as served:
        port = http_port(served)
        a, b = RawSession(port).open(), RawSession(port).open()
        streams = [get_stream(port, a), get_stream(port, b)]
        stop = threading.Event()
        pings: list[int] = []

        def keep_busy() -> None:
            while not stop.wait(1.0):
                pings.append(ping(port, a))

        pinger = threading.Thread(target=keep_busy, daemon=True)
        pinger.start()
        try:
            deadline, refused = time.monotonic() + BOUND_S, 0
            while True:
                status, session = initialize(port)
                if status == 200:
                    break
                assert status == 503 and time.monotonic() < deadline, f"still locked out after {refused} tries"
                refused += 1
                time.sleep(0.25)
            assert session
            assert raw_http(port, b.post({"jsonrpc": "2.0", "id": 5, "method": "ping"}))[0] == 404  # B was ended
            # B's stream was closed with its session; A's is still open and A still answers.
            streams[1].settimeout(BOUND_S)
            while streams[1].recv(65536):
                pass
            assert ping(port, a) == 200 and set(pings) == {200}, pings
        finally:
            stop.set()
            pinger.join(5)
            for stream in streams:
                stream.close()
    record(class_16=1, http_refused=refused)


def describe(image: str) -> dict:
    return {"images": [image], "max_new_tokens": 2, "budget": 70}


def is_busy(result: dict) -> bool:
    return bool(result.get("isError")) and (result.get("_meta") or {}).get("vlm-agent/error", {}).get("code") == "busy"


def hang_up(port: int, session: RawSession, arguments: dict) -> socket.socket:
    """A tools/call whose answer the caller will not wait for: the socket is returned unread."""
    session.n += 1
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    sock.sendall(session.post({"jsonrpc": "2.0", "id": session.n, "method": "tools/call",
                               "params": {"name": "describe", "arguments": arguments}}))
    return sock


def test_callers_that_hang_up_mid_call_give_their_places_back_at_once(tiny_gemma4, tmp_path):
    """--max-queue 2: A's describe is held in generation (a gate injected into the server), B waits
    behind it; both hang up. C must get a place and wait for the model, not be told busy; once
    the gate opens, C is answered. Before, A and B kept both places until their generations ended."""
    picture = tmp_path / "a.png"
    sample_image(64, 48).save(picture)
    gate = tmp_path / "gate"
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"),
            "--max-queue", "2"]
    with serve_http(args, inject(gate, "hold-generate")) as served:
        try:
            outcome = hang_ups_then_a_call(served, gate, str(picture))
        finally:
            (gate / "release").write_text("")  # never leave the server held at the gate
    assert "result" in outcome and not outcome["result"].get("isError"), outcome
    assert outcome["result"]["structuredContent"]["image_ids"]
    record(class_16=1)


def hang_ups_then_a_call(served, gate, picture: str) -> dict:
    """A and B hang up (A held in generation, B waiting behind it); then C calls until admitted."""
    port = http_port(served)
    a, b, c = (RawSession(port).open() for _ in range(3))
    first = hang_up(port, a, describe(picture))
    deadline = time.monotonic() + 120  # the model loads first
    while not (gate / "generating").exists():
        assert time.monotonic() < deadline, f"the first describe never reached the model; log: {served.log()[-2000:]}"
        time.sleep(0.05)
    deadline = time.monotonic() + BOUND_S
    second = hang_up(port, b, describe(picture))
    time.sleep(0.5)  # let B take its place in line; it holds one before and after the fix alike
    first.close()
    second.close()
    outcome: dict = {}

    def call_until_admitted() -> None:
        # Told busy only while the server has not yet seen the hang-ups: retried until admitted.
        while time.monotonic() < deadline:
            outcome["since"] = time.monotonic()
            result = c.call("describe", describe(picture))
            if not is_busy(result):
                outcome["result"] = result
                return
            outcome["busy"] = outcome.get("busy", 0) + 1
            time.sleep(0.2)

    caller = threading.Thread(target=call_until_admitted, daemon=True)
    caller.start()
    # Waiting for the model (no answer for a second) rather than told busy, or the bound passes.
    while caller.is_alive() and time.monotonic() - outcome.get("since", time.monotonic()) < 1.0:
        assert time.monotonic() < deadline, f"told busy {outcome.get('busy', 0)} times; hang-ups kept their places"
        time.sleep(0.05)
    (gate / "release").write_text("")
    caller.join(BOUND_S)
    return outcome

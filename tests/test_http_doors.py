"""Class 9 of the transport campaign: HTTP requests written by hand, headers and bodies.

Host and Origin are compared whole (no prefix match); a message up to the documented size
is taken and a larger one gets a JSON-RPC error, never plain text; odd ids are answered;
sessions never closed are kept to --max-sessions and end after --session-idle-s.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.hardening import check_tool_error, record, serve_http
from tests.raw import INIT, raw_http


@pytest.fixture(scope="module")
def port(tmp_path_factory) -> int:
    out = tmp_path_factory.mktemp("http-doors")
    with serve_http(["--model", "none", "--allow-dir", str(out), "--out-dir", str(out / "out")]) as served:
        yield int(served.url.rsplit(":", 1)[1].split("/")[0])


def post(port: int, body: bytes, **headers: str) -> bytes:
    fields = {
        "Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream", "Content-Length": str(len(body)), "Connection": "close",
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in fields.items() if v)
    return f"POST /mcp HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body


def initialize(pad: int = 0) -> bytes:
    params = {**INIT, "_meta": {"pad": "x" * pad}} if pad else INIT
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}).encode()


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Host": "localhost:evil"}, 421),
        ({"Host": "127.0.0.1:80evil.example"}, 421),
        ({"Host": "localhost:"}, 421),
        ({"Host": "[::1]evil"}, 421),
        ({"Host": "localhost:1234567"}, 421),
        ({"Origin": "http://localhost:1234.evil.com"}, 403),
        ({"Origin": "http://127.0.0.1:80@evil.example"}, 403),
        ({"Origin": "http://localhost:8000/path"}, 403),
        ({"Origin": "http://localhost:evil"}, 403),
        ({"Origin": "ws://localhost:8000"}, 403),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_host_and_origin_are_compared_whole(port, headers, status):
    code, answer_headers, body = raw_http(port, post(port, initialize(), **headers))
    assert code == status, body
    assert answer_headers["content-type"] == "application/json"
    check_tool_error(json.loads(body)["error"])
    record(http_refused=1, class_9=1)


def test_loopback_names_with_a_port_are_served(port):
    for host, origin in [(f"localhost:{port}", f"http://localhost:{port}"), (f"127.0.0.1:{port}", "https://127.0.0.1")]:
        code, _, body = raw_http(port, post(port, initialize(), Host=host, Origin=origin))
        assert code == 200, body


@pytest.mark.parametrize(
    "host, origin",
    [("LOCALHOST", "HTTP://LOCALHOST"), ("LocalHost:{port}", "Http://localHOST:{port}"), ("localhost", "HTTPS://127.0.0.1")],
)
def test_host_names_and_schemes_are_compared_without_case(port, host, origin):
    """Host names and URL schemes are case-insensitive: a browser or client may send them in capitals."""
    headers = {"Host": host.format(port=port), "Origin": origin.format(port=port)}
    code, _, body = raw_http(port, post(port, initialize(), **headers))
    assert code == 200, body
    record(class_9=1)


def test_a_message_carrying_an_image_past_the_sdk_default_is_taken(port):
    """5 MiB: over the SDK's 4 MiB default, well under one 20 MiB image as a data URI."""
    code, _, body = raw_http(port, post(port, initialize(pad=5 * 1024 * 1024)))
    assert code == 200, body[:300]
    record(class_9=1)


def test_a_message_past_the_cap_is_a_json_rpc_error(port):
    from mcp_server.wire import MAX_MESSAGE_BYTES

    # Claimed by Content-Length, and only a start sent: the answer must not wait for the rest.
    request = post(port, initialize(), Content_Length=str(MAX_MESSAGE_BYTES + 1))
    code, headers, body = raw_http(port, request)
    assert code == 413 and headers["content-type"] == "application/json", body[:300]
    answer = json.loads(body)
    assert answer["id"] is None and answer["error"]["code"] == -32600
    check_tool_error(answer["error"]["message"])
    record(http_refused=1, class_9=1)


@pytest.mark.parametrize("raw_id", [b"1.5", b"true", b"{}", b"null"])
def test_odd_ids_over_http_get_an_error(port, raw_id):
    body = b'{"jsonrpc":"2.0","id":' + raw_id + b',"method":"initialize","params":' + json.dumps(INIT).encode() + b"}"
    code, _, answer = raw_http(port, post(port, body))
    assert code == 400, answer
    error = json.loads(answer)
    assert error["id"] is None and error["error"]["code"] == -32600
    record(http_refused=1, class_9=1)


# -- sessions that are never closed -----------------------------------------------------------


def open_session(port: int) -> tuple[int, str | None, bytes]:
    """An initialize without a session id (a new client); its status, session id and body."""
    code, headers, body = raw_http(port, post(port, initialize()))
    return code, headers.get("mcp-session-id"), body


def ping(port: int, session: str) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "ping"}).encode()
    code, _, _ = raw_http(port, post(port, body, **{"Mcp-Session-Id": session, "Mcp-Protocol-Version": INIT["protocolVersion"]}))
    return code


def http_port(served) -> int:
    return int(served.url.rsplit(":", 1)[1].split("/")[0])


def test_sessions_past_the_cap_are_told_to_retry_and_the_server_keeps_only_the_cap(tmp_path):
    """--max-sessions 3, never closed: 20 more clients each get a JSON-RPC sentence and Retry-After; 3 are kept."""
    args = ["--model", "none", "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"),
            "--max-sessions", "3", "--session-idle-s", "600"]
    with serve_http(args) as served:
        port = http_port(served)
        kept = []
        for _ in range(3):
            code, session, body = open_session(port)
            assert code == 200 and session, body
            kept.append(session)
        for _ in range(20):
            code, headers, body = raw_http(port, post(port, initialize()))
            assert code == 503 and "mcp-session-id" not in headers, body
            assert headers["content-type"] == "application/json" and headers["retry-after"] == "600"
            answer = json.loads(body)
            assert answer["id"] is None and "error" in answer
            message = check_tool_error(answer["error"]["message"])
            assert "3 open sessions" in message and "DELETE" in message
        # The sessions held are the first three, and they still work: the server holds the cap, no more.
        assert [ping(port, session) for session in kept] == [200, 200, 200]
        # One ended with DELETE makes room at once.
        head = f"DELETE /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nMcp-Session-Id: {kept[0]}\r\nConnection: close\r\n\r\n"
        assert raw_http(port, head.encode())[0] == 200
        assert open_session(port)[0] == 200
    record(http_refused=20, class_9=1)


def test_never_closed_sessions_lock_nobody_out_past_the_idle_time(tmp_path):
    """--max-sessions 2 --session-idle-s 1: after two clients that never close, a third gets in once one expired."""
    args = ["--model", "none", "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"),
            "--max-sessions", "2", "--session-idle-s", "1"]
    with serve_http(args) as served:
        port = http_port(served)
        idle = [open_session(port)[1] for _ in range(2)]
        assert all(idle), idle
        # Told to retry until an idle session expires; 60 s is a failure bound, not a target.
        deadline, tries = time.monotonic() + 60, 0
        while True:
            code, session, body = open_session(port)
            if code == 200:
                break
            assert code == 503, body
            tries += 1
            assert time.monotonic() < deadline, f"still locked out after {tries} tries"
            time.sleep(0.2)
        # Room was made by ending an idle session: its id is gone.
        assert 404 in [ping(port, s) for s in idle]
    record(class_9=1)

"""Class 9 of the transport campaign: HTTP requests written by hand, headers and bodies.

Host and Origin are compared whole (no prefix match); a message up to the documented size
is taken and a larger one gets a JSON-RPC error, never plain text; odd ids are answered.
"""

from __future__ import annotations

import json

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

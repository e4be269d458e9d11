"""Security of the HTTP server and of what errors say: tokens, Host and Origin, no echoed secrets.

The shared server (tests/conftest.py ``served``) requires a bearer token; every request
here goes to it on loopback.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from mcp_server.transport import BearerToken
from tests.conftest import HTTP_TOKEN
from tests.hardening import check_tool_error, http_client, serve_http

pytestmark = pytest.mark.anyio

PATHS = ["/mcp", "/mcp/", "/", "/sse", "/messages/", "/.well-known/oauth-protected-resource", "/admin",
         "/../etc/passwd"]
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]
WRONG_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {HTTP_TOKEN}x"},
    {"Authorization": f"Bearer {HTTP_TOKEN[:-1]}"},
    {"Authorization": f"bearer{HTTP_TOKEN}"},
    {"Authorization": f"Basic {HTTP_TOKEN}"},
    {"Authorization": HTTP_TOKEN},
    {"X-Api-Key": HTTP_TOKEN},
    {"Cookie": f"token={HTTP_TOKEN}"},
]
INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
GOOD = {**JSON_HEADERS, "Authorization": f"Bearer {HTTP_TOKEN}"}


def test_a_missing_or_wrong_token_is_refused_on_every_endpoint_and_method(served: str) -> None:
    base = served.removesuffix("/mcp")
    refused = 0
    with httpx.Client(timeout=10) as http:
        for path, method, credentials in itertools.product(PATHS, METHODS, WRONG_CREDENTIALS):
            # The query string is no place for a token either.
            url = f"{base}{path}?token={HTTP_TOKEN}&access_token={HTTP_TOKEN}"
            response = http.request(method, url, headers={**JSON_HEADERS, **credentials}, json=INIT)
            assert response.status_code == 401, (path, method, credentials, response.status_code)
            assert HTTP_TOKEN[:8] not in response.text and "wrong-token" not in response.text
            refused += 1
    assert refused == len(PATHS) * len(METHODS) * len(WRONG_CREDENTIALS)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://127.0.0.1.evil.example"}, 403),
        ({"Origin": "http://localhost.evil.example:8000"}, 403),
        ({"Origin": "file://"}, 403),
        ({"Host": "evil.example"}, 421),
        ({"Host": "127.0.0.1.nip.io"}, 421),
        ({"Host": "localhost.evil.example:80"}, 421),
        ({"Host": "attacker.example:8000"}, 421),
    ],
    ids=lambda value: str(value),
)
def test_foreign_origins_and_hosts_are_refused_even_with_the_token(served: str, headers: dict[str, str],
                                                                   status: int) -> None:
    with httpx.Client(timeout=10) as http:
        for method in ("POST", "GET", "DELETE"):
            response = http.request(method, served, headers={**GOOD, **headers}, json=INIT)
            assert response.status_code == status, (method, response.status_code)
            assert HTTP_TOKEN not in response.text


async def test_the_right_token_and_a_loopback_origin_are_served(served: str) -> None:
    with httpx.Client(timeout=10) as http:
        response = http.post(served, headers={**GOOD, "Origin": "http://localhost:5173"}, json=INIT)
    assert response.status_code == 200
    async with http_client(served, HTTP_TOKEN) as client:
        assert len((await client.list_tools()).tools) == 6


async def test_a_websocket_upgrade_without_the_token_never_reaches_the_app() -> None:
    reached: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["type"])

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = BearerToken(app, HTTP_TOKEN)
    await guard({"type": "websocket", "headers": [(b"authorization", b"Bearer nope")]}, receive, send)
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
    await guard({"type": "websocket", "headers": [(b"authorization", f"Bearer {HTTP_TOKEN}".encode())]}, receive, send)
    await guard({"type": "lifespan"}, receive, send)
    assert reached == ["websocket", "lifespan"]


async def test_errors_never_echo_secrets(served: str, corpus) -> None:
    """URL credentials and tokens in arguments stay out of tool errors; probing outside gives nothing away."""
    calls = [
        {"images": [f"http://admin:{HTTP_TOKEN}@127.0.0.1:9/x.png"]},
        {"images": [f"https://{HTTP_TOKEN}@10.0.0.1/x.png"]},
        {"images": [f"ftp://user:{HTTP_TOKEN}@127.0.0.1/x.png"]},
    ]
    async with http_client(served, HTTP_TOKEN) as client:
        for arguments in calls:
            result = await client.call_tool("describe", arguments)
            assert result.is_error
            check_tool_error(result.content[0].text, [HTTP_TOKEN])
        # An existing and a missing file outside the allowed folder get the same answer.
        answers = []
        for ref in (corpus.outside / "secret.png", corpus.outside / "no-such.png"):
            result = await client.call_tool("describe", {"images": [str(ref)]})
            answers.append(check_tool_error(result.content[0].text).replace(ref.name, "NAME"))
    assert answers[0] == answers[1]


def test_the_token_never_reaches_the_log(tiny_gemma4, tmp_path) -> None:
    """A verbose server, hit with wrong and right tokens, logs neither the token nor the attempts' secrets."""
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"),
            "--token-env", "VLM_LOG_TOKEN"]
    with serve_http(args, {"VLM_LOG_TOKEN": HTTP_TOKEN}, verbose=True) as server, httpx.Client(timeout=10) as http:
        for credentials in ({"Authorization": "Bearer guessed-secret"}, {"Authorization": f"Bearer {HTTP_TOKEN}"}):
            http.post(server.url, headers={**JSON_HEADERS, **credentials}, json=INIT)
        server.proc.terminate()
        server.proc.wait(10)
        log = server.log()
    assert "MCP endpoint" in log  # the log is really there
    assert HTTP_TOKEN not in log and "guessed-secret" not in log

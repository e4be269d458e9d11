"""`vlm-agent serve` as a real process: over stdio, and over HTTP with its guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import sample_image
from tests.hardening import serve_http

pytestmark = pytest.mark.anyio

VLM_AGENT = str(Path(sys.executable).parent / "vlm-agent")
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served")
    sample_image(512, 512).save(root / "square.png")
    return root


def serve_args(model: Path, images: Path, *extra: str) -> list[str]:
    return ["serve", "--model", str(model), "--allow-dir", str(images), "--out-dir", str(images / "out"), *extra]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


async def test_stdio_round_trip_through_the_console_script(tiny_gemma4, images):
    params = StdioServerParameters(command=VLM_AGENT, args=serve_args(tiny_gemma4, images), env=env())
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"describe", "ocr", "detect", "compare_budgets", "chat", "extract"}
        result = await client.call_tool("describe", {"images": [str(images / "square.png")], "max_new_tokens": 3})
        assert not result.is_error, result.content
        assert result.structured_content["image_tokens"] == 256
        bad = await client.call_tool("ocr", {"image": "/etc/passwd"})
        assert bad.is_error and "outside the allowed folders" in bad.content[0].text
        assert not (await client.call_tool("ocr", {"image": str(images / "square.png"), "max_new_tokens": 2})).is_error


def rpc(id_: int | None, method: str, params: dict | None = None) -> bytes:
    message: dict = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        message["id"] = id_
    if params is not None:
        message["params"] = params
    return (json.dumps(message) + "\n").encode()


def test_stdio_stdout_carries_only_protocol(tiny_gemma4, images):
    """Every byte on stdout is a JSON-RPC message; logs and load progress go to stderr."""
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}
    call = {"name": "describe", "arguments": {"images": [str(images / "square.png")], "max_new_tokens": 2}}
    stdin = b"".join(
        [rpc(1, "initialize", init), rpc(None, "notifications/initialized"), rpc(2, "tools/call", call)]
    )
    proc = subprocess.Popen(
        [VLM_AGENT, *serve_args(tiny_gemma4, images)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env(),
    )
    proc.stdin.write(stdin)
    proc.stdin.flush()
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if json.loads(line).get("id") == 2:
            break
    proc.stdin.close()
    proc.wait(30)
    stderr = proc.stderr.read().decode()
    messages = [json.loads(line) for line in lines]  # any stray print would fail here
    assert all(m["jsonrpc"] == "2.0" for m in messages)
    answer = next(m for m in messages if m.get("id") == 2)
    assert answer["result"]["structuredContent"]["image_tokens"] == 256
    assert "loading" in stderr
    from importlib.metadata import version

    hello = next(m for m in messages if m.get("id") == 1)
    info = hello["result"]["serverInfo"]
    assert (info["name"], info["version"]) == ("vlm-agent", version("vlm-agent"))


@pytest.fixture(scope="module")
def http_server(tiny_gemma4, images):
    args = serve_args(tiny_gemma4, images, "--token-env", "VLM_TEST_TOKEN")[1:]  # serve_http says "serve"
    with serve_http(args, {"VLM_TEST_TOKEN": TOKEN}) as server:
        yield server.url


INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.example"}, 403),
        ({"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"}, 421),
    ],
    ids=["no token", "wrong token", "wrong scheme", "foreign origin", "foreign host"],
)
def test_http_refuses_requests_without_token_or_from_foreign_origins(http_server, headers, status):
    for method in ("POST", "GET", "DELETE"):
        response = httpx.request(method, http_server, headers={**JSON_HEADERS, **headers}, json=INIT, timeout=10)
        assert response.status_code == status
        assert TOKEN not in response.text and "wrong" not in response.text.replace("missing or wrong", "")


async def test_http_serves_a_client_with_the_token(http_server, images):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    async with http, Client(streamable_http_client(http_server, http_client=http)) as client:
        assert len((await client.list_tools()).tools) == 6
        result = await client.call_tool("describe", {"images": [str(images / "square.png")], "max_new_tokens": 2})
        assert not result.is_error, result.content
        assert result.structured_content["image_tokens"] == 256

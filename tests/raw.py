"""Doors an attacker uses: raw bytes on a real `vlm-agent serve` stdio process, raw HTTP.

No MCP client here on purpose: a client validates what it sends, an attacker does not.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tests.hardening import VLM_AGENT

INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}


def rpc(id_: Any, method: str, params: dict | None = None) -> bytes:
    message: dict = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


def call(id_: Any, tool: str, arguments: dict) -> bytes:
    return rpc(id_, "tools/call", {"name": tool, "arguments": arguments})


class RawStdio:
    """A `vlm-agent serve` child spoken to in raw lines; answers are read with a deadline."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        verbose: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.log_file = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [VLM_AGENT, *(["-v"] if verbose else []), "serve", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log_file, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, preexec_fn=preexec_fn,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data if data.endswith(b"\n") else data + b"\n")
        self.proc.stdin.flush()

    def read(self, timeout: float = 60) -> dict:
        """The next message on stdout; fails when none comes (the hang this guards against)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer within {timeout} s; server log: {self.log()[-2000:]}") from None
        assert line, f"the server closed stdout; log: {self.log()[-2000:]}"
        return json.loads(line)

    def poll(self, timeout: float) -> dict | None:
        """The next message on stdout, or None when none came within ``timeout``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        assert line, f"the server closed stdout; log: {self.log()[-2000:]}"
        return json.loads(line)

    def answer(self, id_: Any, timeout: float = 60) -> dict:
        """The response to ``id_``, skipping notifications (progress, logging)."""
        while True:
            message = self.read(timeout)
            if "id" in message and message["id"] == id_ and ("result" in message or "error" in message):
                return message

    def handshake(self) -> None:
        self.send(rpc(0, "initialize", INIT))
        assert "result" in self.answer(0)
        self.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())

    def log(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log_file.close()


class Calls:
    """Tool calls on a raw server, each with a fresh id, whose answers must be results."""

    n = 100

    @classmethod
    def run(cls, server: RawStdio, tool: str, arguments: dict) -> dict:
        cls.n += 1
        server.send(call(cls.n, tool, arguments))
        answer = server.answer(cls.n, timeout=120)
        assert "result" in answer, answer
        return answer["result"]


@contextmanager
def raw_stdio(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    verbose: bool = False,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[RawStdio]:
    server = RawStdio(args, env, verbose, preexec_fn)
    try:
        server.handshake()
        yield server
    finally:
        server.close()


def raw_http(port: int, request: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """Send hand-made request bytes to 127.0.0.1:port; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) before it has read everything
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def dechunk(body: bytes) -> bytes:
    """The payload of a ``Transfer-Encoding: chunked`` body."""
    out, rest = bytearray(), body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return bytes(out)


def messages(headers: dict[str, str], body: bytes) -> list[dict]:
    """The JSON-RPC messages of an HTTP answer: a JSON body, or the data of its server-sent events."""
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    if headers.get("content-type", "").startswith("application/json"):
        return [json.loads(body)] if body else []
    found = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if data:
            found.append(json.loads(data))
    return found


class RawSession:
    """One MCP session (the 2025 handshake, with its ``Mcp-Session-Id``) spoken in hand-made HTTP requests."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.port, self.token = port, token
        self.id: str | None = None
        self.n = 0

    def post(self, message: dict, session: bool = True) -> bytes:
        body = json.dumps(message).encode()
        fields = {
            "Host": f"127.0.0.1:{self.port}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream", "Content-Length": str(len(body)), "Connection": "close",
        }
        if self.token:
            fields["Authorization"] = f"Bearer {self.token}"
        if session and self.id:
            fields.update({"Mcp-Session-Id": self.id, "Mcp-Protocol-Version": INIT["protocolVersion"]})
        head = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
        return f"POST /mcp HTTP/1.1\r\n{head}\r\n".encode() + body

    def open(self) -> RawSession:
        status, headers, body = raw_http(self.port, self.post({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                               "params": INIT}, session=False))
        assert status == 200 and headers.get("mcp-session-id"), (status, body[:300])
        self.id = headers["mcp-session-id"]
        status, _, body = raw_http(self.port, self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        assert status == 202, (status, body[:300])
        return self

    def exchange(self, method: str, params: dict | None = None, timeout: float = 120) -> tuple[dict, int]:
        """The answer to one request, and the size of the HTTP body it came in."""
        self.n += 1
        message: dict = {"jsonrpc": "2.0", "id": self.n, "method": method}
        if params is not None:
            message["params"] = params
        status, headers, body = raw_http(self.port, self.post(message), timeout=timeout)
        assert status == 200, (status, body[:300])
        for answer in messages(headers, body):
            if answer.get("id") == self.n:
                return answer, len(body)
        raise AssertionError(f"no answer to {method}: {body[:300]!r}")

    def request(self, method: str, params: dict | None = None, timeout: float = 120) -> dict:
        return self.exchange(method, params, timeout)[0]

    def call(self, tool: str, arguments: dict) -> dict:
        answer = self.request("tools/call", {"name": tool, "arguments": arguments})
        assert "result" in answer, answer
        return answer["result"]

"""What the hardening campaign's tests share: the rules a tool error keeps, a real HTTP server,
an MCP client for it, and the tally behind the summary line the test run prints.

The tally counts only what passed: each test records its numbers after its assertions.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from mcp import Client

VLM_AGENT = str(Path(sys.executable).parent / "vlm-agent")

#: exception class names, as a traceback or a repr would show them
CLASS_NAME_RE = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning|Interrupt|Exit)\b")
#: a sentence ends at one of these, followed by a space or the end
SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")
#: paths of this installation that no error may show
INSTALL_PATHS = (str(Path(__file__).resolve().parents[1]), str(Path(httpx.__file__).resolve().parents[1]))

TALLY: Counter[str] = Counter()
#: the classes of the transport campaign (docs/security.md, "Through the real transports")
TRANSPORT_CLASSES = 18


def record(**counts: int) -> None:
    TALLY.update(counts)


def summary_line() -> str | None:
    """The campaign's one-line result, or None when none of its tests ran; parts that did not run are left out."""
    t = TALLY
    if not t:
        return None
    parts = []
    if t["refused"] + t["accepted"]:
        parts.append(
            f"{t['refused'] + t['accepted']} bad-input cases handled cleanly ({t['refused']} refused, "
            f"{t['accepted']} accepted; {t['over_http']} also over HTTP)"
        )
    if t["clients"]:
        parts.append(
            f"load {t['clients']}x{t['calls_each']} held ({t['load_ok']} ok, {t['load_errors']} errors, "
            f"{t['load_mixed']} mixed up, {t['load_lost']} lost)"
        )
    if t["busy"]:
        parts.append(f"{t['busy']} calls told busy past the queue bound")
    if t["faults"]:
        parts.append(f"{t['faults']} faults survived")
    if t["engine_answers"]:
        parts.append(f"{t['engine_answers']} hostile engine answers cut or refused")
    classes = sorted(int(key.removeprefix("class_")) for key in t if key.startswith("class_") and t[key])
    if classes:
        parts.append(
            f"{len(classes)} of {TRANSPORT_CLASSES} transport attack classes closed through the real doors "
            f"(classes {', '.join(map(str, classes))}; {t['wire_refused']} raw stdio lines and "
            f"{t['http_refused']} hand-made HTTP requests answered with an error)"
        )
    kill = (
        f"chat killed mid-turn: {t['chat_turns_kept']} completed turns kept" if t["chat_turns_kept"]
        else "chat-history kill: not run"
    )
    parts.append(f"{t['load_lost'] + t['chat_turns_lost']} data lost ({kill})")
    return "hardening: " + ", ".join(parts)


def check_tool_error(message: str, hidden: Sequence[str] = (), sent: str = "") -> str:
    """The rules every tool error keeps: one actionable sentence, nothing of the server's insides.

    ``sent`` is what the call carried: an address in it may be quoted back."""
    assert message.strip() == message and message, repr(message)
    assert "\n" not in message and "\r" not in message, message
    assert len(SENTENCE_END_RE.findall(message)) == 1 and SENTENCE_END_RE.search(message[-1:]), message
    assert len(message) < 400, message
    assert "Traceback" not in message and 'File "' not in message, message
    for address in re.findall(r"\b0x[0-9a-fA-F]{6,}", message):  # memory addresses
        assert address in sent, message
    assert not CLASS_NAME_RE.search(message), message
    for text in (*INSTALL_PATHS, *hidden):
        assert text not in message, (text, message)
    return message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A running `vlm-agent serve --transport http`: its /mcp URL, process and log file."""

    url: str
    proc: subprocess.Popen
    log_file: IO[bytes]

    def log(self) -> str:
        self.log_file.seek(0)
        return self.log_file.read().decode(errors="replace")


@contextmanager
def serve_http(args: Sequence[str], env: dict[str, str] | None = None, *, verbose: bool = False) -> Iterator[Served]:
    """``vlm-agent serve --transport http ARGS`` on a free loopback port, until the block ends."""
    port = free_port()
    # A file, not a pipe: a busy server must never block on a full stderr pipe nobody reads.
    with tempfile.TemporaryFile() as log_file:
        proc = subprocess.Popen(
            [VLM_AGENT, *(["-v"] if verbose else []), "serve", "--transport", "http", "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=log_file, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        served = Served(f"http://127.0.0.1:{port}/mcp", proc, log_file)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(served.url, timeout=1)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the server did not start: {served.log()}") from None
                    time.sleep(0.1)
            yield served
        finally:
            proc.terminate()
            proc.wait(10)


@asynccontextmanager
async def http_client(url: str, token: str | None = None, timeout: float = 60) -> AsyncIterator[Client]:
    """An MCP client session over streamable HTTP, with the bearer token when given."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=timeout)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client

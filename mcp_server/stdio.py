"""The stdio transport: one JSON-RPC message a line, and an answer for every line.

The SDK's stdio reader drops a line it cannot parse without a word, so the client waits
forever. Here every line is judged by ``wire.check_message`` first: a line the server
cannot take gets a JSON-RPC error (id null where the id is unknown) and a log line on
stderr, and the server reads on. Lines are read as bytes with a cap, so an endless line
costs at most ``MAX_MESSAGE_BYTES`` of memory.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage

from .wire import MAX_MESSAGE_BYTES, Refusal, check_message

log = logging.getLogger("vlm_agent.server")


@contextmanager
def claimed_stdio() -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """Private copies of stdin and stdout; meanwhile fd 0 reads the null device and fd 1 writes to
    stderr, so a library that prints (or a child that reads stdin) never touches the protocol."""
    sys.stdout.flush()
    wire_in, wire_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        with os.fdopen(wire_in, "rb", buffering=1 << 20) as stdin, os.fdopen(wire_out, "wb") as stdout:
            yield stdin, stdout
    finally:
        sys.stdout.flush()


def read_line(stream: BinaryIO) -> bytes | None:
    """The next line without its ending, or None at end of input. A line past the cap is read
    to its end but kept only up to the cap plus one byte, so the check refuses it."""
    line = bytearray()
    while True:
        chunk = stream.readline(1 << 20)
        if not chunk:
            return bytes(line) if line else None
        if len(line) <= MAX_MESSAGE_BYTES:
            line += chunk[: MAX_MESSAGE_BYTES + 1 - len(line)]
        if chunk.endswith(b"\n"):
            return bytes(line).rstrip(b"\r\n")


async def serve_stdio(server: MCPServer) -> None:
    lowlevel = server._lowlevel_server  # the SDK's own stdio runner does the same
    with claimed_stdio() as (stdin, stdout):
        read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
        write_stream, write_reader = create_context_streams[SessionMessage](0)

        async def write(data: bytes) -> None:
            def put() -> None:
                stdout.write(data)
                stdout.flush()

            await anyio.to_thread.run_sync(put)

        async def read_lines() -> None:
            async with read_writer:
                while (line := await anyio.to_thread.run_sync(read_line, stdin, abandon_on_cancel=True)) is not None:
                    if not line.strip():
                        continue
                    checked = check_message(line)
                    if isinstance(checked, Refusal):
                        log.warning("refused a stdio message: %s", checked.message)
                        # Through the writer, so an error never interleaves with another answer.
                        await write_stream.send(SessionMessage(checked.response()))
                        continue
                    await read_writer.send(SessionMessage(checked))

        async def write_messages() -> None:
            async with write_reader:
                async for message in write_reader:
                    text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await write((text + "\n").encode())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read_lines)
            tasks.start_soon(write_messages)
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
            tasks.cancel_scope.cancel()

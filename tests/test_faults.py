"""Faults: callers that cancel or hang up mid-generation, a device out of memory, a crashing backend.

After each, the server must answer the next call promptly and correctly, with its queue
counter and model lock back at rest. The generation of a cancelled call must really stop:
a long generation that ran on would hold the model for seconds after its caller left.

And the chat client killed mid-turn keeps every completed turn in its SQLite history.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from mcp_server.transport import http_app
from tests.conftest import sample_image
from tests.hardening import check_tool_error, free_port, http_client, record
from tests.test_mcp import make_server
from tools.model import load_model

pytestmark = pytest.mark.anyio

#: asked of the calls that get cancelled; run to the end, it would take 10 s or more here
LONG = 8000
#: what "promptly" means for the call after a cancelled one, even on a busy 2-core machine
PROMPT_S = 5.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    (root / "images").mkdir()
    sample_image(64, 48).save(root / "images" / "small.png")
    return root


class LongGenerations:
    """Makes every long request generate all its tokens (no early end of sequence), and
    records how many tokens each generation really produced."""

    def __init__(self, backend) -> None:
        self.started = threading.Event()
        self.produced: list[int] = []
        real = backend.runtime.model.generate

        def generate(**kwargs: Any) -> Any:
            if kwargs["max_new_tokens"] == LONG:
                kwargs["min_new_tokens"] = LONG
                self.started.set()
            output = real(**kwargs)
            self.produced.append(int(output.shape[1] - kwargs["input_ids"].shape[1]))
            return output

        backend.runtime.model.generate = generate


@pytest.fixture
def rig(workdir: Path, tiny_gemma4: Path):
    """A server on its own backend (patched per test), with a long and a short call."""
    backend = load_model(str(tiny_gemma4))
    long_calls = LongGenerations(backend)
    server = make_server(workdir, str(tiny_gemma4), backend)
    image = str(workdir / "images" / "small.png")
    return server, long_calls, {"images": [image], "budget": 70, "max_new_tokens": LONG}, {
        "images": [image], "budget": 70, "max_new_tokens": 2}


def at_rest(server) -> bool:
    resident = server.resident
    return resident.pending == 0 and resident.vision is not None and not resident.vision._lock.locked()


def stopped_early(long_calls: LongGenerations, server) -> None:
    """The cancelled generation (the first) ended long before its length, and nothing is left held."""
    assert long_calls.produced[0] < LONG / 2, long_calls.produced
    assert at_rest(server)


async def answered_promptly(client: Client, short: dict[str, Any]) -> float:
    started = time.monotonic()
    result = await client.call_tool("describe", short)
    elapsed = time.monotonic() - started
    assert not result.is_error, result.content
    assert elapsed < PROMPT_S, elapsed
    return elapsed


async def start_then_cancel(client: Client, tool_args: dict[str, Any], started: threading.Event) -> None:
    """Start a call, wait until its generation runs, then cancel it the way a client does."""
    async with anyio.create_task_group() as group:
        scope = anyio.CancelScope()

        async def call() -> None:
            with scope:
                await client.call_tool("describe", tool_args)
            assert scope.cancelled_caught, "the long call finished before it was cancelled"

        group.start_soon(call)
        assert await anyio.to_thread.run_sync(started.wait, 30)
        await anyio.sleep(0.3)
        scope.cancel()


async def test_a_cancelled_call_stops_generating_and_the_next_starts_promptly(rig) -> None:
    server, long_calls, long, short = rig
    async with Client(server) as client:
        await start_then_cancel(client, long, long_calls.started)
        await answered_promptly(client, short)
    stopped_early(long_calls, server)
    record(faults=1)


async def test_a_call_cancelled_while_queued_never_runs(rig) -> None:
    server, long_calls, long, short = rig
    resident = server.resident
    async with Client(server) as client:
        async with anyio.create_task_group() as group:
            running, queued = anyio.CancelScope(), anyio.CancelScope()

            async def call(scope: anyio.CancelScope) -> None:
                with scope:
                    await client.call_tool("describe", long)

            group.start_soon(call, running)
            assert await anyio.to_thread.run_sync(long_calls.started.wait, 30)
            group.start_soon(call, queued)
            with anyio.fail_after(10):
                while resident.pending < 2:
                    await anyio.sleep(0.01)
            queued.cancel()
            with anyio.fail_after(PROMPT_S):  # it gives its place back while the first still runs
                while resident.pending > 1:
                    await anyio.sleep(0.01)
            assert not long_calls.produced  # the first one is still generating
            running.cancel()
        await answered_promptly(client, short)
    assert len(long_calls.produced) == 2  # the queued one never generated
    stopped_early(long_calls, server)
    record(faults=1)


@contextmanager
def served_in_thread(server) -> Iterator[str]:
    """The server's real HTTP app under uvicorn on a free loopback port, in this process, so
    that the test can watch its backend."""
    import uvicorn

    port = free_port()
    web = uvicorn.Server(uvicorn.Config(http_app(server, "127.0.0.1", None), host="127.0.0.1", port=port,
                                        log_level="warning"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        web.should_exit = True
        thread.join(10)


async def test_a_client_that_hangs_up_over_http_stops_the_generation(rig) -> None:
    server, long_calls, long, short = rig
    with served_in_thread(server) as url:
        async with anyio.create_task_group() as group:

            async def hang_up_mid_call() -> None:
                async with http_client(url) as client:
                    await client.call_tool("describe", long)

            group.start_soon(hang_up_mid_call)
            assert await anyio.to_thread.run_sync(long_calls.started.wait, 30)
            await anyio.sleep(0.3)
            group.cancel_scope.cancel()  # the client goes away, connection and all
        async with http_client(url) as client:
            await answered_promptly(client, short)
        stopped_early(long_calls, server)
    record(faults=1)


async def test_out_of_memory_mid_generation_is_reported_and_the_next_call_works(rig) -> None:
    import torch

    server, _, _, short = rig
    model = (await server.resident.ready()).model.runtime.model
    steps = {"n": 0}
    forward = model.forward

    @functools.wraps(forward)  # generate() checks its arguments against forward's signature
    def failing_forward(*args: Any, **kwargs: Any) -> Any:
        # The simulated device fills up on the third decoding step of the first call.
        steps["n"] += 1
        if steps["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 0x7f3a12345678)")
        return forward(*args, **kwargs)

    model.forward = failing_forward
    generate = model.generate

    def without_early_end(**kwargs: Any) -> Any:
        # Random weights may write the end of sequence within three steps; the fault must come first.
        return generate(**{**kwargs, "min_new_tokens": kwargs["max_new_tokens"]})

    model.generate = without_early_end
    async with Client(server) as client:
        first = await client.call_tool("describe", {**short, "max_new_tokens": 8})
        assert first.is_error
        assert "ran out of device memory" in check_tool_error(first.content[0].text, ["GiB", "CUDA", "0x7f3a"])
        await answered_promptly(client, short)
    assert steps["n"] > 3 and at_rest(server)
    record(faults=1)


async def test_a_crashing_backend_leaks_nothing_and_the_server_keeps_serving(rig) -> None:
    server, _, _, short = rig
    backend = (await server.resident.ready()).model
    real = backend.run
    calls = {"n": 0}

    def crash_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom in /srv/secret/model.py at 0x7f3a12345678, token=abc123")
        return real(*args, **kwargs)

    backend.run = crash_once
    async with Client(server) as client:
        first = await client.call_tool("describe", short)
        assert first.is_error
        check_tool_error(first.content[0].text, ["/srv/secret", "abc123", "boom"])
        await answered_promptly(client, short)
    assert at_rest(server)
    record(faults=1)


def test_killing_the_chat_mid_turn_loses_no_completed_turn(tiny_gemma4, tmp_path):
    """SIGKILL while the third answer is being generated: the first two turns are on disk, intact."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    home = tmp_path / "home"
    image = tmp_path / "photo.png"
    sample_image(512, 512).save(image)
    lines = ["/describe first", "/describe second", "/describe third, a long one", "/quit"]
    env = {**os.environ, "VLM_AGENT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.chat_driver", str(tiny_gemma4), str(image), *lines],
        env=env, cwd=Path(__file__).resolve().parents[1], start_new_session=True,
    )
    database = home / "chat.sqlite3"

    def completed() -> int:
        try:
            with sqlite3.connect(database) as db:
                return db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0

    deadline = time.monotonic() + 120
    while completed() < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert completed() == 2, "the chat did not complete its first two turns"
    # The third turn has just been sent: 512 tokens of it take seconds on this model.
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # the chat and the server it started
    proc.wait(10)

    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        records = [row[0] for row in db.execute("SELECT record FROM turns ORDER BY seq")]
    import json

    users = [json.loads(r)["user"] for r in records]
    assert users[:2] == ["first", "second"] and len(users) in (2, 3)  # a finished third turn may be there too
    record(faults=1, chat_turns_kept=2, chat_turns_lost=2 - min(len(users), 2))

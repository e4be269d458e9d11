"""Costs as work grows: a long conversation, many turns and many images in memory, several HTTP clients.

Each scenario prints a table of its own: what it measures is how a cost changes with the amount
of work, not ours against the seed (the long conversation shows the seed's turns too).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from tools.checks import MAX_HISTORY_TURNS

from .measure import rss, sync
from .scenarios import QUESTIONS, Bench, Outcome, Row, Table, forced

MiB = 2**20


def long_chat(bench: Bench, turns: int = 20, budget: int = 280, shown: Sequence[int] = (1, 2, 5, 10, 15, 20)) -> Outcome:
    """One image, ``turns`` questions, each turn sending the whole history (ours' answers, to both sides).

    Ours resumes each turn from the previous one's KV cache, so a turn prefills only its new
    tokens; the seed encodes the image and prefills the whole conversation every turn.
    """
    path = str(bench.image)
    said: list[tuple[str, str, list[str]]] = []
    ours, seed, reused = [], [], []
    bench.backend.clear_caches()
    for turn in range(turns):
        question = f"{QUESTIONS[turn % len(QUESTIONS)]} (question {turn + 1})"
        images = [path] if turn == 0 else []
        history = [{"role": role, "content": text, "images": refs} for role, text, refs in said]
        timing, result = bench.ours(
            lambda: bench.vision.describe(images, question, history, budget=budget, options=bench.options)
        )
        ours.append(timing)
        reused.append(result.cache.reused_prompt_tokens if result.cache else 0)
        seed.append(bench.seed(bench.messages(question, turn == 0, said), budget)[0])
        said += [("user", question, images), ("assistant", result.text, [])]
    rows = [
        [n, round(ours[n - 1].ttft_ms, 1), reused[n - 1], round(seed[n - 1].ttft_ms, 1)]
        for n in shown if n <= turns
    ]
    late = ours[turns - 1].ttft_ms / ours[1].ttft_ms
    table = Table(
        f"{turns}-turn conversation on one image @{budget}, {bench.tokens} tokens per answer (one run)",
        ["turn", "ours: time to first token (ms)", "ours: prompt tokens reused", "seed: time to first token (ms)"],
        rows,
    )
    return Outcome(
        rows=[Row(f"{turns}-turn chat @{budget}", f"turn {turns} / turn 2 time to first token", "x",
                  late, seed[turns - 1].ttft_ms / seed[1].ttft_ms)],
        facts={"long_chat_late_over_turn2": late},
        tables=[table],
    )


def pictures(count: int, size: tuple[int, int] = (320, 240), seed: int = 0) -> list[Image.Image]:
    """``count`` different pictures: shapes in colours that depend on the index."""
    out = []
    for n in range(count):
        image = Image.new("RGB", size, ((37 * n + seed) % 256, (91 * n) % 256, (53 * n + 101) % 256))
        draw = ImageDraw.Draw(image)
        draw.rectangle([n % 50, n % 40, 120 + n % 90, 100 + n % 70], fill=((11 * n) % 256, 200, (7 * n) % 256))
        draw.text((10, 200), f"picture {seed}-{n}", fill=(0, 0, 0))
        out.append(image)
    return out


def memory(bench: Bench, turns: int = 50, images: int = 100, budget: int = 280, tokens: int = 8) -> Outcome:
    """Process memory and the caches' sizes across ``turns`` turns on one image, then ``images`` distinct images.

    Past the server's history limit the conversation keeps its first exchange and the latest ones.
    """
    backend, vision = bench.backend, bench.vision
    options = forced(tokens)
    gpu = backend.model.device.type == "cuda"
    store = vision.loader.store
    caps = {"vision": backend.vision_cache.max_bytes, "prefix": getattr(backend.prefix_cache, "max_bytes", None),
            "images": store.max_bytes}

    def sample(step: str, n: int) -> list[Any]:
        sync(backend.model.device)
        row = [step, n, round(rss() / MiB, 1)]
        if gpu:
            row.append(round(torch.cuda.memory_allocated() / MiB, 1))
        row += [round(backend.vision_cache.nbytes / MiB, 2), round(backend.prefix_cache.nbytes / MiB, 2),
                round(store.total_bytes / MiB, 2)]
        return row

    def held() -> dict[str, int]:
        return {"vision": backend.vision_cache.nbytes, "prefix": backend.prefix_cache.nbytes,
                "images": store.total_bytes}

    backend.clear_caches()
    rows = [sample("start", 0)]
    peaks = held()
    said: list[dict[str, Any]] = []
    path = str(bench.image)
    marks = {1, 10, 20, 30, 40, turns}
    for turn in range(1, turns + 1):
        # The server takes at most MAX_HISTORY_TURNS earlier messages: past that, keep the first exchange
        # (it holds the image) and the latest ones, as a client trimming its context would.
        kept = said if len(said) <= MAX_HISTORY_TURNS else said[:2] + said[len(said) - MAX_HISTORY_TURNS + 2:]
        result = vision.describe([path] if turn == 1 else [], f"{QUESTIONS[turn % len(QUESTIONS)]} ({turn})", kept,
                                 budget=budget, options=options)
        said += [{"role": "user", "content": f"question {turn}", "images": [path] if turn == 1 else []},
                 {"role": "assistant", "content": result.text}]
        peaks = {name: max(peaks[name], now) for name, now in held().items()}
        if turn in marks:
            rows.append(sample("turns", turn))
    backend.clear_caches()
    marks = {1, 25, 50, 75, images}
    folder = bench.image.parent / "distinct"
    folder.mkdir(exist_ok=True)
    for n, picture in enumerate(pictures(images), 1):
        picture.save(folder / f"{n}.png")
    for n in range(1, images + 1):
        vision.describe([str(folder / f"{n}.png")], QUESTIONS[0], budget=budget, options=options)
        peaks = {name: max(peaks[name], now) for name, now in held().items()}
        if n in marks:
            rows.append(sample("images", n))
    headers = ["after", "count", "process RSS (MiB)", *(["GPU allocated (MiB)"] if gpu else []),
               "vision cache (MiB)", "prefix cache (MiB)", "decoded images kept (MiB)"]
    under = all(caps[k] is None or peaks[k] <= caps[k] for k in caps)
    prefix_cap = "–" if caps["prefix"] is None else f"{caps['prefix'] / MiB:.0f}"
    title = (f"memory over {turns} turns on one image, then {images} distinct images @{budget}, {tokens} tokens each; "
             f"caps: vision {caps['vision'] / MiB:.0f} MiB, prefix {prefix_cap} MiB, images {caps['images'] / MiB:.0f} MiB")
    rss_growth = rows[-1][2] - rows[0][2]
    return Outcome(
        rows=[Row("memory", f"RSS growth over {turns} turns + {images} images", "MiB", rss_growth)],
        facts={"caches_under_caps": under, "cache_peaks_mib": {k: round(v / MiB, 2) for k, v in peaks.items()}},
        tables=[Table(title, headers, rows)],
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def p95(values: Sequence[float]) -> float:
    """The nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def http_clients(checkpoint: Path, workdir: Path, clients: int = 4, calls: int = 10, tokens: int = 16,
                 budget: int = 280) -> Outcome:
    """``clients`` MCP clients x ``calls`` describes on different images against one `vlm-agent serve --transport
    http` on 127.0.0.1, against the same number of calls one after another (other images, same server)."""
    folder = workdir / "http-images"
    folder.mkdir(exist_ok=True)
    total = clients * calls
    paths = []
    for n, picture in enumerate(pictures(2 * total + 1, seed=7)):
        picture.save(folder / f"{n}.png")
        paths.append(str(folder / f"{n}.png"))
    port = free_port()
    log = open(workdir / "http-server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--transport", "http", "--port", str(port), "--model",
         str(checkpoint), "--allow-dir", str(folder), "--out-dir", str(workdir / "out"), "--max-queue", str(2 * total)],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        wait_for(port, server)
        together, apart = asyncio.run(_http_runs(url, paths, clients, calls, tokens, budget))
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    (wall_c, lat_c), (wall_s, lat_s) = together, apart
    rows = [
        [f"{clients} clients × {calls} calls at once", total, round(wall_c, 1), round(statistics.median(lat_c), 1),
         round(p95(lat_c), 1)],
        [f"{total} calls one after another", total, round(wall_s, 1), round(statistics.median(lat_s), 1),
         round(p95(lat_s), 1)],
    ]
    table = Table(
        f"HTTP: describe on a different image each call @{budget}, {tokens} tokens, one server on 127.0.0.1",
        ["how", "calls", "total (ms)", "median latency (ms)", "p95 latency (ms)"], rows,
    )
    return Outcome(
        rows=[Row("HTTP", f"{clients}×{calls} at once / one after another, total", "x", wall_c / wall_s)],
        facts={"http_total_ratio": wall_c / wall_s, "http_p95_ms": p95(lat_c)},
        tables=[table],
    )


def wait_for(port: int, server: subprocess.Popen[bytes], limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start") from None
            time.sleep(0.2)


async def _http_runs(url: str, paths: list[str], clients: int, calls: int, tokens: int,
                     budget: int) -> tuple[tuple[float, list[float]], tuple[float, list[float]]]:
    from mcp import Client

    def arguments(path: str) -> dict[str, Any]:
        return {"images": [path], "prompt": "What is it?", "budget": budget, "max_new_tokens": tokens}

    async def call(client: Any, path: str, latencies: list[float]) -> None:
        started = time.perf_counter()
        result = await client.call_tool("describe", arguments(path))
        latencies.append((time.perf_counter() - started) * 1000)
        if result.is_error:
            raise RuntimeError(f"the server refused the call: {result.content[0].text}")

    total = clients * calls
    async with Client(url) as client:
        await call(client, paths[-1], [])  # waits for the model to load

    async def one_client(mine: list[str], latencies: list[float]) -> None:
        async with Client(url) as client:
            for path in mine:
                await call(client, path, latencies)

    together: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(one_client(paths[n * calls:(n + 1) * calls], together) for n in range(clients)))
    wall_together = (time.perf_counter() - started) * 1000
    apart: list[float] = []
    started = time.perf_counter()
    async with Client(url) as client:
        for path in paths[total:2 * total]:
            await call(client, path, apart)
    wall_apart = (time.perf_counter() - started) * 1000
    return (wall_together, together), (wall_apart, apart)

"""``python -m bench --peer vllm``: the same scenarios through our local runtime and through vLLM.

Both sides are vlm-agent as users run it, spoken to as MCP clients speak to it (streamable HTTP
on 127.0.0.1), on the same tiny Gemma 4 checkpoint: **ours** is `vlm-agent serve --model DIR`
(the local runtime: its vision cache, prefix reuse and batched budgets); **vLLM** is `vlm-agent
serve --backend openai` on a vLLM started here on the same checkpoint with the command
docs/scaling.md gives for a CPU, vLLM's defaults included (prefix caching, its multimodal cache,
continuous batching, its compiled model). Only what a CPU needs is added: float32 (the
checkpoint's precision, ours too) and 1 GiB of KV cache. vlm-agent's own work on the vLLM side
(loading images, PNG encoding, HTTP) is in its column: it is how a user of vlm-agent runs vLLM.

Each scenario alternates the two sides, new pictures for each run, and reports medians of the
client's wall time per call, the tokens each side generated, and for vLLM the share of prompt
tokens its prefix cache served (its own metrics). The machine's load is sampled throughout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .growth import free_port, p95, pictures, wait_for

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
BUILD_HINT = "build the vLLM environment once with `bash .ci/vllm-env` (about 10 min, 6.3 GB)"
#: docs/scaling.md's vLLM command for a CPU, less --enforce-eager and --max-num-seqs (vLLM's defaults
#: then apply: its compiled model, 256 sequences at once); --dtype float32 is the checkpoint's precision
VLLM_FLAGS = (
    "--limit-mm-per-prompt", '{"image": 32}', "--trust-request-mm-kwargs",
    "--enable-auto-tool-choice", "--tool-call-parser", "gemma4", "--dtype", "float32",
)
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
#: launch to the first real generation: 1-2.5 minutes alone on 2 cores, more beside other work
READY_S = 900
QUESTION = "Describe this image in detail."
LABELS = ["box", "circle"]
BUDGETS = [70, 140, 280, 560, 1120]
SIZE = (1024, 768)


@dataclass
class PeerRow:
    """One measure on both sides: medians of the client's wall time, and the tokens each generated."""

    scenario: str
    metric: str
    unit: str
    ours: float | None
    peer: float | None
    tokens: tuple[int | None, int | None] = (None, None)
    #: what the row is for, or what one side did differently
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if self.ours is None or not self.peer else self.ours / self.peer


@dataclass
class Sizes:
    """How much each scenario does; the defaults make the table in docs/performance.md."""

    tokens: int = 32
    repeats: int = 3
    budget_tokens: tuple[int, ...] = (32, 256)
    turns: int = 20
    clients: int = 8
    calls_per_client: int = 3


@dataclass
class Side:
    """One `vlm-agent serve --transport http`, and for the vLLM side the engine's metrics address."""

    name: str
    url: str
    folder: Path
    metrics_url: str | None = None
    #: pictures handed out so far: each run looks at a picture this side has not seen
    used: int = 0
    loads: list[float] = field(default_factory=list)

    def fresh(self, count: int = 1) -> list[str]:
        """``count`` pictures this side has never been sent (the same sequence on both sides)."""
        paths = []
        for n in range(self.used, self.used + count):
            path = self.folder / f"{n}.png"
            if not path.exists():
                pictures(1, SIZE, seed=n)[0].save(path)
            paths.append(str(path))
        self.used += count
        return paths

    def cache_counts(self) -> dict[str, float] | None:
        """vLLM's prefix-cache counters (tokens looked up, tokens found); None for ours."""
        if self.metrics_url is None:
            return None
        key = os.environ.get("VLM_AGENT_API_KEY")
        text = httpx.get(self.metrics_url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=10).text
        counts = {}
        for name in ("prefix_cache_queries", "prefix_cache_hits"):
            counts[name] = sum(
                float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"vllm:{name}_total{{")
            )
        return counts


def load_average() -> float:
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])


# -- the servers ------------------------------------------------------------------------------


@contextmanager
def vllm_engine(checkpoint: Path, workdir: Path, python: Path) -> Iterator[str]:
    """vLLM on ``checkpoint`` at a loopback port, ready after one real generation; its API root."""
    if not python.exists():
        raise SystemExit(f"--peer vllm needs vLLM at {python}: {BUILD_HINT}.")
    port = free_port()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
               "--host", "127.0.0.1", "--port", str(port), *VLLM_FLAGS]
    log = workdir / "vllm.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **VLLM_ENV},
                                start_new_session=True, cwd=workdir)
    root = f"http://127.0.0.1:{port}/v1"
    try:
        started = time.monotonic()
        first_generation(root, str(checkpoint), proc, log, started + READY_S)
        print(f"vLLM ready in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        yield root
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def first_generation(root: str, model: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """Wait until the engine answers a real request with an image (a health check passes before that)."""
    import base64
    import io

    buffer = io.BytesIO()
    pictures(1, (64, 48), seed=-1)[0].save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = {"model": model, "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi."}]}
    ]}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM exited with {proc.returncode}; its log: {log}\n{log.read_text()[-2000:]}")
        try:
            answer = httpx.post(f"{root}/chat/completions", json=body, timeout=300)
            if answer.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(2)
    raise SystemExit(f"vLLM was not ready within {READY_S} s; its log: {log}")


@contextmanager
def mcp_server(args: Sequence[str], workdir: Path, name: str, threads: int | None) -> Iterator[str]:
    """`vlm-agent serve --transport http` with ``args`` on a loopback port; its MCP URL."""
    port = free_port()
    folder = workdir / "pictures"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    log = open(workdir / f"{name}-server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "serve", "--transport", "http", "--port", str(port),
         "--allow-dir", str(folder), "--out-dir", str(workdir / f"{name}-out"), "--max-queue", "256", *args],
        stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=str(ROOT),
    )
    try:
        wait_for(port, server)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


# -- calls --------------------------------------------------------------------------------------


async def call(client: Any, tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One tool call: the client's wall time in ms and the structured result."""
    started = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    ms = (time.perf_counter() - started) * 1000
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content[0].text}")
    return ms, result.structured_content


def describe(images: Sequence[str], budget: int, tokens: int, prompt: str = QUESTION,
             history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"images": list(images), "prompt": prompt, "budget": budget, "max_new_tokens": tokens, "history": list(history)}


@dataclass
class Runs:
    """What one scenario measured on one side over its repeats: named wall times, tokens, cache counts."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    queried: float = 0.0
    found: float = 0.0

    def add(self, name: str, ms: float, tokens: int | None = None) -> None:
        self.ms.setdefault(name, []).append(ms)
        if tokens is not None:
            self.tokens[name] = tokens

    def median(self, name: str) -> float | None:
        values = self.ms.get(name)
        return statistics.median(values) if values else None

    @property
    def hit_share(self) -> float | None:
        return None if not self.queried else self.found / self.queried


Scenario = Callable[[Any, Side, Runs], Awaitable[None]]


async def measure(sides: Sequence[Side], repeats: int, scenario: Scenario) -> list[Runs]:
    """``scenario`` on each side, ``repeats`` times, alternating which side goes first."""
    from mcp import Client

    runs = [Runs() for _ in sides]
    for repeat in range(repeats):
        order = list(range(len(sides)))
        if repeat % 2:
            order.reverse()
        for n in order:
            side = sides[n]
            side.loads.append(load_average())
            before = side.cache_counts()
            async with Client(side.url) as client:
                await scenario(client, side, runs[n])
            after = side.cache_counts()
            if before is not None and after is not None:
                runs[n].queried += after["prefix_cache_queries"] - before["prefix_cache_queries"]
                runs[n].found += after["prefix_cache_hits"] - before["prefix_cache_hits"]
    return runs


def rows_of(scenario: str, runs: Sequence[Runs], metrics: Sequence[tuple[str, str]], note: str = "") -> list[PeerRow]:
    """The scenario's rows; its note on the first, the share vLLM's prefix cache served on the last."""
    ours, peer = runs
    out = [
        PeerRow(scenario, metric, "ms", ours.median(name), peer.median(name), (ours.tokens.get(name), peer.tokens.get(name)))
        for name, metric in metrics
    ]
    out[0].note = note
    if peer.hit_share is not None:
        share = f"vLLM's prefix cache served {100 * peer.hit_share:.0f}% of its prompt tokens"
        out[-1].note = "; ".join(filter(None, [out[-1].note, share]))
    return out


# -- the scenarios ----------------------------------------------------------------------------


async def cold(sides: Sequence[Side], sizes: Sizes, budget: int = 1120) -> list[PeerRow]:
    async def scenario(client: Any, side: Side, runs: Runs) -> None:
        ms, result = await call(client, "describe", describe(side.fresh(), budget, sizes.tokens))
        runs.add("call", ms, result["generated_tokens"])

    runs = await measure(sides, sizes.repeats, scenario)
    return rows_of(f"cold describe @{budget}", runs, [("call", "a picture neither side has seen")])


async def follow_up(sides: Sequence[Side], sizes: Sizes, budget: int = 1120) -> list[PeerRow]:
    async def scenario(client: Any, side: Side, runs: Runs) -> None:
        picture = side.fresh()
        ms, first = await call(client, "describe", describe(picture, budget, sizes.tokens))
        runs.add("turn 1", ms, first["generated_tokens"])
        history = [{"role": "user", "content": QUESTION, "images": first["image_ids"]},
                   {"role": "assistant", "content": first["text"]}]
        ms, second = await call(client, "describe", describe([], budget, sizes.tokens, "Which colours dominate it?", history))
        runs.add("turn 2", ms, second["generated_tokens"])

    runs = await measure(sides, sizes.repeats, scenario)
    return rows_of(f"follow-up turn @{budget}", runs, [("turn 1", "turn 1"), ("turn 2", "turn 2, the first in its history")])


async def tasks(sides: Sequence[Side], sizes: Sizes, budget: int = 280) -> list[PeerRow]:
    async def scenario(client: Any, side: Side, runs: Runs) -> None:
        picture = side.fresh()[0]
        total = 0.0
        for step, tool, arguments in (
            ("describe", "describe", describe([picture], budget, sizes.tokens)),
            ("ocr", "ocr", {"image": picture, "budget": budget, "max_new_tokens": sizes.tokens}),
            ("detect", "detect", {"image": picture, "labels": LABELS, "budget": budget, "max_new_tokens": sizes.tokens}),
        ):
            ms, result = await call(client, tool, arguments)
            runs.add(step, ms, result["generated_tokens"])
            total += ms
        runs.add("total", total)

    runs = await measure(sides, sizes.repeats, scenario)
    return rows_of(f"describe→ocr→detect @{budget}", runs, [
        ("describe", "describe"), ("ocr", "ocr after it"), ("detect", "detect after them"), ("total", "all three"),
    ], note="vLLM: detect answers under its JSON schema (structured outputs)")


async def compare(sides: Sequence[Side], sizes: Sizes) -> list[PeerRow]:
    rows = []
    for tokens in sizes.budget_tokens:
        async def scenario(client: Any, side: Side, runs: Runs, tokens: int = tokens) -> None:
            ms, result = await call(client, "compare_budgets", {
                "image": side.fresh()[0], "task": "describe", "prompt": QUESTION, "budgets": BUDGETS, "max_new_tokens": tokens,
            })
            runs.add("call", ms, sum(run["generated_tokens"] for run in result["runs"]))

        runs = await measure(sides, sizes.repeats, scenario)
        rows += rows_of(f"compare_budgets ×{len(BUDGETS)}, {tokens} tokens", runs, [("call", "the five budgets")])
    return rows


async def growth(sides: Sequence[Side], sizes: Sizes, budget: int = 280) -> list[PeerRow]:
    """One conversation of ``turns`` turns on one picture, each sending the whole history."""

    async def scenario(client: Any, side: Side, runs: Runs) -> None:
        images = side.fresh()
        said: list[dict[str, Any]] = []
        for turn in range(1, sizes.turns + 1):
            question = f"{QUESTION} (question {turn})"
            ms, result = await call(client, "describe", describe(images, budget, sizes.tokens, question, said))
            runs.add(f"turn {turn}", ms, result["generated_tokens"])
            # the picture goes back by its id, in the turn it came with, as the chat sends it
            said += [{"role": "user", "content": question, "images": result["image_ids"] if images else []},
                     {"role": "assistant", "content": result["text"]}]
            images = []
        runs.add("all", sum(runs.ms[f"turn {n}"][-1] for n in range(1, sizes.turns + 1)))

    runs = await measure(sides, sizes.repeats, scenario)
    last = f"turn {sizes.turns}"
    rows = rows_of(f"{sizes.turns}-turn conversation @{budget}", runs, [
        ("turn 1", "turn 1"), ("turn 2", "turn 2"), (last, last), ("all", f"all {sizes.turns} turns"),
    ])
    ours, peer = (run.median(last) / run.median("turn 2") for run in runs)  # type: ignore[operator]
    rows.append(PeerRow(rows[0].scenario, f"{last} / turn 2", "x", ours, peer))
    return rows


async def clients(sides: Sequence[Side], sizes: Sizes, budget: int = 280) -> list[PeerRow]:
    """``clients`` MCP clients at once, each ``calls_per_client`` describes of its own pictures."""
    from mcp import Client

    async def one(side: Side, paths: list[str], latencies: list[float], tokens: list[int]) -> None:
        async with Client(side.url) as client:
            for path in paths:
                ms, result = await call(client, "describe", describe([path], budget, sizes.tokens))
                latencies.append(ms)
                tokens.append(result["generated_tokens"])

    async def scenario(_: Any, side: Side, runs: Runs) -> None:
        latencies: list[float] = []
        tokens: list[int] = []
        batches = [side.fresh(sizes.calls_per_client) for _ in range(sizes.clients)]
        started = time.perf_counter()
        await asyncio.gather(*(one(side, paths, latencies, tokens) for paths in batches))
        runs.add("wall", (time.perf_counter() - started) * 1000, sum(tokens))
        runs.add("median", statistics.median(latencies))
        runs.add("p95", p95(latencies))

    runs = await measure(sides, sizes.repeats, scenario)
    calls = sizes.clients * sizes.calls_per_client
    return rows_of(f"{sizes.clients} clients at once @{budget}", runs, [
        ("wall", f"all {calls} calls, wall time"), ("median", "one call, median latency"), ("p95", "one call, p95 latency"),
    ], note="the engine's strength: it batches concurrent requests; ours runs one at a time")


SCENARIOS: dict[str, Callable[[Sequence[Side], Sizes], Awaitable[list[PeerRow]]]] = {
    "cold": cold, "follow-up": follow_up, "tasks": tasks, "compare": compare, "growth": growth, "clients": clients,
}


# -- the run ----------------------------------------------------------------------------------


def run_peer(checkpoint: Path, workdir: Path, sizes: Sizes, threads: int | None, engine_root: str | None = None,
             python: Path = VLLM_PYTHON, chosen: Sequence[str] = tuple(SCENARIOS)) -> dict[str, Any]:
    """Every chosen scenario on both sides; ``engine_root`` uses a vLLM already running on ``checkpoint``."""
    folder = workdir / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _engine(checkpoint, workdir, python, engine_root) as root:
        ours_args = ["--model", str(checkpoint)]
        peer_args = ["--backend", "openai", "--base-url", root, "--api-model", str(checkpoint), "--budgets-supported",
                     "--max-concurrency", str(max(sizes.clients, 4))]
        with mcp_server(ours_args, workdir, "ours", threads) as ours_url, mcp_server(peer_args, workdir, "vllm", None) as peer_url:
            metrics = root.removesuffix("/v1") + "/metrics"
            sides = [Side("ours", ours_url, folder), Side("vLLM", peer_url, folder, metrics)]
            asyncio.run(warm(sides))
            rows: list[PeerRow] = []
            for name in chosen:
                print(f"running {name} …", file=sys.stderr, flush=True)
                rows += asyncio.run(SCENARIOS[name](sides, sizes))
    loads = [load for side in sides for load in side.loads]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peer": "vllm",
        "settings": {"new_tokens_per_call": sizes.tokens, "repeats": sizes.repeats, "threads_ours": threads,
                     "vllm_flags": list(VLLM_FLAGS), "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": VLLM_ENV["VLLM_CPU_KVCACHE_SPACE"]},
                     "vlm_agent_on_vllm": peer_args[4:], "cpus": os.cpu_count()},
        "load_average": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)} if loads else None,
        "seconds": round(time.monotonic() - started),
        "rows": [{"scenario": r.scenario, "metric": r.metric, "unit": r.unit, "ours": r.ours, "vllm": r.peer,
                  "ratio": r.ratio, "tokens_ours": r.tokens[0], "tokens_vllm": r.tokens[1], "note": r.note} for r in rows],
    }


@contextmanager
def _engine(checkpoint: Path, workdir: Path, python: Path, root: str | None) -> Iterator[str]:
    if root is not None:
        yield root
        return
    with vllm_engine(checkpoint, workdir, python) as started:
        yield started


async def warm(sides: Sequence[Side]) -> None:
    """One untimed call on each side: loading and first-call setup are not what is compared."""
    from mcp import Client

    for side in sides:
        async with Client(side.url) as client:
            await call(client, "describe", describe(side.fresh(), 280, 2))


HEADERS = ["scenario", "metric", "ours (ms)", "vLLM (ms)", "ours / vLLM", "tokens ours / vLLM", "note"]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    def cell(value: float | None, unit: str) -> str:
        return "–" if value is None else (f"{value:.2f}" if unit == "x" else f"{value:.0f}")

    out = []
    for r in results["rows"]:
        tokens = "–" if r["tokens_ours"] is None else f"{r['tokens_ours']} / {r['tokens_vllm']}"
        metric = r["metric"] + (" (x)" if r["unit"] == "x" else "")
        ratio = "–" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append([r["scenario"], metric, cell(r["ours"], r["unit"]), cell(r["vllm"], r["unit"]), ratio, tokens, r["note"]])
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    load = results.get("load_average")
    if load:
        lines += ["", f"Load average (1 min) while measuring: median {load['median']:.1f}, "
                      f"{load['min']:.1f} to {load['max']:.1f}, on {results['settings']['cpus']} CPUs."]
    return "\n".join(lines) + "\n"


def show(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    settings = results["settings"]
    title = (f"ours / vLLM on the tiny Gemma 4, {settings['new_tokens_per_call']} new tokens per call, median of "
             f"{settings['repeats']}; ours with {settings['threads_ours'] or 'torch default'} threads")
    table = Table(*HEADERS[:-1], title=title)
    notes = []
    for row in table_rows(results):
        table.add_row(*row[:-1])
        if row[-1]:
            notes.append(f"{row[0]}, {row[1]}: {row[-1]}")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note)
    load = results.get("load_average")
    if load:
        console.print(f"load average while measuring: median {load['median']:.1f} ({load['min']:.1f} to {load['max']:.1f})")


def main(args: Any, workdir: Path) -> dict[str, Any]:
    from tools.tiny import build_tiny

    sizes = Sizes(tokens=args.tokens or 32, repeats=args.repeats or 3, budget_tokens=tuple(args.budget_tokens or (32, 256)),
                  turns=args.turns, clients=args.clients, calls_per_client=args.calls_per_client)
    python = Path(args.vllm_python) if args.vllm_python else VLLM_PYTHON
    if args.peer_url is None and not python.exists():
        raise SystemExit(f"--peer vllm needs vLLM at {python}: {BUILD_HINT}.")
    checkpoint = Path(args.peer_model) if args.peer_model else build_tiny(workdir / "tiny", "gemma4")
    results = run_peer(checkpoint, workdir, sizes, args.threads, args.peer_url, python, args.peer_scenarios)
    results["command"] = " ".join(["python -m bench", *map(_quoted, sys.argv[1:])])
    return results


def _quoted(word: str) -> str:
    return json.dumps(word) if not word or any(c in word for c in " '\"{}") else word

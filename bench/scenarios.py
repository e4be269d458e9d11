"""The scenarios: our way and the seed notebook's way, alternating in one process on one model.

Our way is the product: ``Vision`` over the resident backend, with its vision cache, prefix
reuse, batched budgets and SDPA (plus the static cache and compiled decoding with
``--compile``). The seed-style baseline is what the seed notebook does: one
``pipeline("image-text-to-text")`` called once per question with the whole message list,
eager attention, nothing kept between calls. Both send the same messages, so the same tokens,
and both generate exactly ``tokens`` new tokens.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools import prompts
from tools.backends.base import Backend, Turn
from tools.backends.gemma4 import Gemma4Backend, build_messages
from tools.cache import DynamicPrefixCache
from tools.images import AccessPolicy, ImageLoader
from tools.options import GenerationOptions
from tools.vision import Vision

from .measure import Timing, attention, decode_bytes_per_token, median_timing, memory_bandwidth, timed

QUESTIONS = (
    "Describe this image in detail.",
    "Which colours dominate it?",
    "Is there any text in it? Quote it.",
    "What is in the top left corner?",
)
LABELS = ("box", "circle")
BUDGETS = (70, 140, 280, 560, 1120)


@dataclass
class Row:
    scenario: str
    metric: str
    unit: str
    ours: float | None
    seed: float | None = None

    @property
    def ratio(self) -> float | None:
        """ours / seed-style: below 1 is faster for times, above 1 is faster for rates."""
        return ratio(self.ours, self.seed)


@dataclass
class Ablation:
    """One optimisation switched off and on, everything else equal, on our side only."""

    optimisation: str
    measure: str
    unit: str
    without: float | None
    with_: float | None

    @property
    def ratio(self) -> float | None:
        return ratio(self.with_, self.without)


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    #: named facts the targets are checked against
    facts: dict[str, Any] = field(default_factory=dict)
    ablations: list[Ablation] = field(default_factory=list)


class Bench:
    """One model, our front door to it and the seed-style pipeline on the same weights."""

    def __init__(self, backend: Gemma4Backend, image: Path, tokens: int, repeats: int) -> None:
        from transformers import pipeline

        self.backend = backend
        self.model = backend.model
        self.image = image
        self.tokens = tokens
        self.repeats = repeats
        self.vision = Vision(backend, ImageLoader(AccessPolicy.for_server([str(image.parent)])))
        self.options = GenerationOptions(max_new_tokens=tokens, min_new_tokens=tokens)
        self.pipe = pipeline("image-text-to-text", model=backend.model, processor=backend.processor)
        self.bytes_per_token = decode_bytes_per_token(self.model)
        self.bandwidth, self.bandwidth_source = memory_bandwidth(self.model.device)

    def ours(self, call: Callable[[], Any]) -> tuple[Timing, Any]:
        return timed(self.model, self.tokens, call)

    def seed(self, messages: list[dict[str, Any]], budget: int) -> tuple[Timing, str]:
        """One seed-style call; run it inside ``self.eager()``."""
        kwargs = {"max_new_tokens": self.tokens, "min_new_tokens": self.tokens, "do_sample": False,
                  # our --compile must not leak into the baseline through the shared generation config
                  "disable_compile": True}
        timing, out = timed(self.model, self.tokens, lambda: self.pipe(
            text=messages, generate_kwargs=kwargs, processor_kwargs={"max_soft_tokens": budget}, return_full_text=False
        ))
        return timing, out[0]["generated_text"]

    def eager(self) -> Any:
        return attention(self.model, "eager")

    def messages(self, text: str, with_image: bool = True, history: Sequence[Turn] = ()) -> list[dict[str, Any]]:
        """What our backend sends, with the image as a path for the pipeline to load, as the seed does."""
        return build_messages([str(self.image)] if with_image else [], text, history)  # type: ignore[list-item]

    def fraction_of_bandwidth(self, tokens_per_s: float | None) -> float | None:
        return None if tokens_per_s is None else tokens_per_s * self.bytes_per_token / self.bandwidth


def single(bench: Bench, budgets: Sequence[int] = (70, 280, 1120)) -> Outcome:
    """One describe on a cold backend at each budget: time to first token, decode rate, peak memory."""
    outcome = Outcome()
    path = str(bench.image)
    for budget in budgets:
        ours, seed = [], []
        for _ in range(bench.repeats):
            bench.backend.clear_caches()
            ours.append(bench.ours(lambda: bench.vision.describe([path], QUESTIONS[0], budget=budget, options=bench.options))[0])
            with bench.eager():
                seed.append(bench.seed(bench.messages(QUESTIONS[0]), budget)[0])
        o, s = median_timing(ours), median_timing(seed)
        name = f"describe @{budget}"
        outcome.rows += [
            Row(name, "time to first token", "ms", o.ttft_ms, s.ttft_ms),
            Row(name, "decode", "tok/s", o.decode_tps, s.decode_tps),
            Row(name, "decode / bandwidth limit", "%", pct(bench.fraction_of_bandwidth(o.decode_tps)),
                pct(bench.fraction_of_bandwidth(s.decode_tps))),
            Row(name, "peak memory", "MiB", o.peak_mb, s.peak_mb),
        ]
        outcome.facts[f"decode_fraction@{budget}"] = bench.fraction_of_bandwidth(o.decode_tps)
        outcome.facts[f"decode_speedup@{budget}"] = ratio(o.decode_tps, s.decode_tps)
    return outcome


def conversation(bench: Bench, budget: int = 1120) -> Outcome:
    """Four turns on one image, each with the whole history; the answers are ours, sent back to both."""
    path = str(bench.image)
    ours: list[list[Timing]] = [[] for _ in QUESTIONS]
    seed: list[list[Timing]] = [[] for _ in QUESTIONS]
    follow_up_vision: list[str] = []
    for _ in range(bench.repeats):
        bench.backend.clear_caches()
        #: (role, text, image paths) of the turns so far
        said: list[tuple[str, str, list[str]]] = []
        for turn, question in enumerate(QUESTIONS):
            images = [path] if turn == 0 else []
            history = [{"role": role, "content": text, "images": refs} for role, text, refs in said]
            timing, result = bench.ours(
                lambda: bench.vision.describe(images, question, history, budget=budget, options=bench.options)
            )
            ours[turn].append(timing)
            if turn:
                follow_up_vision.append(result.cache.vision)
            said += [("user", question, images), ("assistant", result.text, [])]
        with bench.eager():
            for turn, question in enumerate(QUESTIONS):
                history = [Turn(role, text, tuple(refs)) for role, text, refs in said[: 2 * turn]]  # type: ignore[arg-type]
                seed[turn].append(bench.seed(bench.messages(question, turn == 0, history), budget)[0])
    o = [median_timing(t) for t in ours]
    s = [median_timing(t) for t in seed]
    name = f"4-turn chat @{budget}"
    outcome = Outcome()
    for turn in range(len(QUESTIONS)):
        outcome.rows.append(Row(name, f"turn {turn + 1} time to first token", "ms", o[turn].ttft_ms, s[turn].ttft_ms))
    later = statistics.mean(t.ttft_ms for t in o[1:]) / o[0].ttft_ms
    later_seed = statistics.mean(t.ttft_ms for t in s[1:]) / s[0].ttft_ms
    outcome.rows.append(Row(name, "turns 2-4 / turn 1 time to first token", "%", 100 * later, 100 * later_seed))
    outcome.facts.update(
        turn2_over_turn1=o[1].ttft_ms / o[0].ttft_ms,
        follow_up_vision=sorted(set(follow_up_vision)),
    )
    return outcome


def tasks(bench: Bench, budget: int = 280) -> Outcome:
    """describe, then ocr, then detect on one image, from a cold backend."""
    path = str(bench.image)
    vision = bench.vision
    steps: list[tuple[str, Callable[[], Any], str]] = [
        ("describe", lambda: vision.describe([path], QUESTIONS[0], budget=budget, options=bench.options), QUESTIONS[0]),
        ("ocr", lambda: vision.ocr(path, budget=budget, options=bench.options), prompts.GEMMA4_OCR),
        ("detect", lambda: vision.detect(path, LABELS, budget=budget, options=bench.options),
         prompts.gemma4_detect(LABELS)),
    ]
    ours: list[list[Timing]] = [[] for _ in steps]
    seed: list[list[Timing]] = [[] for _ in steps]
    for _ in range(bench.repeats):
        bench.backend.clear_caches()
        for n, (_, call, _) in enumerate(steps):
            ours[n].append(bench.ours(call)[0])
        with bench.eager():
            for n, (_, _, text) in enumerate(steps):
                seed[n].append(bench.seed(bench.messages(text), budget)[0])
    name = f"describe→ocr→detect @{budget}"
    o = [median_timing(t) for t in ours]
    s = [median_timing(t) for t in seed]
    outcome = Outcome()
    for (step, _, _), ot, st in zip(steps, o, s):
        outcome.rows.append(Row(name, f"{step} time to first token", "ms", ot.ttft_ms, st.ttft_ms))
    outcome.rows.append(Row(name, "all three, total", "ms", sum(t.total_ms for t in o), sum(t.total_ms for t in s)))
    return outcome


def budgets(bench: Bench, chosen: Sequence[int] = BUDGETS) -> Outcome:
    """compare_budgets over the budgets against one sequential seed-style call per budget."""
    path = str(bench.image)
    ours, seed = [], []
    for _ in range(bench.repeats):
        bench.backend.clear_caches()
        started = time.perf_counter()
        bench.vision.compare_budgets(path, "describe", QUESTIONS[0], budgets=chosen, options=bench.options)
        ours.append((time.perf_counter() - started) * 1000)
        with bench.eager():
            seed.append(sum(bench.seed(bench.messages(QUESTIONS[0]), budget)[0].total_ms for budget in chosen))
    row = Row(f"compare_budgets ×{len(chosen)}", "total", "ms", statistics.median(ours), statistics.median(seed))
    return Outcome([row], {"compare_ratio": row.ratio})


def ablations(bench: Bench, budget: int = 1120) -> Outcome:
    """What each optimisation buys: ours with it and without it, nothing else changed."""
    backend, path = bench.backend, str(bench.image)
    follow_up = [{"role": "user", "content": QUESTIONS[0], "images": [path]}, {"role": "assistant", "content": "A picture."}]

    def cold_describe() -> Timing:
        backend.clear_caches()
        return bench.ours(lambda: bench.vision.describe([path], QUESTIONS[0], budget=budget, options=bench.options))[0]

    def second_turn(keep_vision: bool, keep_prefix: bool) -> Timing:
        kept = backend.prefix_cache
        if not keep_prefix:
            backend.prefix_cache = DynamicPrefixCache(max_entries=0)
        try:
            cold_describe()
            if not keep_vision:
                backend.clear_caches()
            return bench.ours(lambda: bench.vision.describe(
                [], QUESTIONS[1], follow_up, budget=budget, options=bench.options
            ))[0]
        finally:
            backend.prefix_cache = kept

    def at_budgets(batched: bool) -> float:
        backend.clear_caches()
        run = backend.at_budgets if batched else lambda *a: Backend.at_budgets(backend, *a)
        started = time.perf_counter()
        run("describe", bench.vision.load_images([path])[0].image, QUESTIONS[0], (), BUDGETS, bench.options)
        return (time.perf_counter() - started) * 1000

    def median_of(measure: Callable[[], Any]) -> Any:
        values = [measure() for _ in range(bench.repeats)]
        return median_timing(values) if isinstance(values[0], Timing) else statistics.median(values)

    with bench.eager():
        eager = median_of(cold_describe)
    sdpa = median_of(cold_describe)
    nothing = median_of(lambda: second_turn(False, False))
    vision_only = median_of(lambda: second_turn(True, False))
    both = median_of(lambda: second_turn(True, True))
    found = [
        Ablation("SDPA attention (not eager)", f"cold describe @{budget}, time to first token", "ms",
                 eager.ttft_ms, sdpa.ttft_ms),
        Ablation("vision cache", f"follow-up turn @{budget}, time to first token", "ms",
                 nothing.ttft_ms, vision_only.ttft_ms),
        Ablation("prefix reuse (with the vision cache)", f"follow-up turn @{budget}, time to first token", "ms",
                 vision_only.ttft_ms, both.ttft_ms),
        Ablation("one batch for the budgets", "at_budgets over five budgets, total", "ms",
                 median_of(lambda: at_budgets(False)), median_of(lambda: at_budgets(True))),
    ]
    if backend.compiled:
        found.append(Ablation("compiled decoding on the static cache", "cold describe @280, decode", "tok/s",
                              *_decode_without_and_with_compile(bench)))
    return Outcome(ablations=found)


def _decode_without_and_with_compile(bench: Bench) -> tuple[float | None, float | None]:
    """A dynamic prefix cache turns compilation off: transformers compiles only for static caches."""
    backend, path = bench.backend, str(bench.image)

    def decode() -> float | None:
        backend.clear_caches()
        return bench.ours(lambda: bench.vision.describe([path], QUESTIONS[0], budget=280, options=bench.options))[0].decode_tps

    static = backend.prefix_cache
    backend.prefix_cache = DynamicPrefixCache()
    try:
        without = statistics.median(decode() or 0.0 for _ in range(bench.repeats))
    finally:
        backend.prefix_cache = static
    return without, statistics.median(decode() or 0.0 for _ in range(bench.repeats))


def mcp_overhead(checkpoint: Path, image: Path, calls: int) -> Outcome:
    """A describe over stdio to `vlm-agent serve`, minus the same call in process, on the tiny checkpoint.

    The protocol's cost does not depend on the model, so the tiny one keeps the model's own time
    (and its noise) small next to what is measured.
    """
    from tools.backends import load_backend

    arguments = {"images": [str(image)], "prompt": "What is it?", "budget": 70, "max_new_tokens": 1}
    stdio = asyncio.run(_stdio_calls(checkpoint, image.parent, arguments, calls))
    vision = Vision(load_backend(str(checkpoint)), ImageLoader(AccessPolicy.for_server([str(image.parent)])))
    options = GenerationOptions(max_new_tokens=1)
    local = []
    for n in range(calls + 1):
        started = time.perf_counter()
        vision.describe([str(image)], "What is it?", budget=70, options=options)
        if n:  # the first call fills the caches, as the server's warm-up call does
            local.append((time.perf_counter() - started) * 1000)
    over_stdio, in_process = statistics.median(stdio), statistics.median(local)
    rows = [
        Row("MCP stdio", "describe call, median", "ms", over_stdio),
        Row("MCP stdio", "same call in process, median", "ms", in_process),
        Row("MCP stdio", "overhead per call", "ms", over_stdio - in_process),
    ]
    return Outcome(rows, {"mcp_overhead_ms": over_stdio - in_process})


async def _stdio_calls(checkpoint: Path, folder: Path, arguments: dict[str, Any], calls: int) -> list[float]:
    from mcp import Client, StdioServerParameters

    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent.cli", "serve", "--model", str(checkpoint), "--allow-dir", str(folder),
              "--out-dir", str(folder / "out")],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    times = []
    async with Client(server) as client:
        await client.call_tool("describe", arguments)  # waits for the model to load
        for _ in range(calls):
            started = time.perf_counter()
            result = await client.call_tool("describe", arguments)
            times.append((time.perf_counter() - started) * 1000)
            if result.is_error:
                raise RuntimeError(f"the server refused the call: {result.content[0].text}")
    return times


def pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def ratio(ours: float | None, seed: float | None) -> float | None:
    return None if ours is None or not seed else ours / seed

"""The scenarios: our way and the seed notebook's way, alternating in one process on one model.

Our way is the product: ``Vision`` over the resident backend, with its vision cache, prefix
reuse and batched budgets (plus the static cache and compiled decoding with ``--compile``).
The seed baseline is the seed notebook's code as written: one
``pipeline("image-text-to-text")`` called once per question with the whole message list and
the checkpoint's own generation config, with transformers' default attention (SDPA), nothing
kept between calls. Both send the same messages, so the same tokens, and both generate exactly
``tokens`` new tokens. What switching one of our optimisations off costs (eager attention
included) is measured apart, as ablations on our side.
"""

from __future__ import annotations

import asyncio
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tools.families import gemma4
from tools.families.gemma4 import Gemma4Runtime, image_inputs, left_pad
from tools.model import Model
from tools.runtimes.local import LocalRuntime
from tools.tasks import Ask, Stopwatch
from tools.runtimes.cache import DynamicPrefixCache
from tools.inputs import AccessPolicy, ImageLoader
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
class Table:
    """A table of its own, for what does not fit "ours against the seed" (the growth scenarios)."""

    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Outcome:
    rows: list[Row] = field(default_factory=list)
    #: named facts the targets are checked against
    facts: dict[str, Any] = field(default_factory=dict)
    ablations: list[Ablation] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.rows += other.rows
        self.facts.update(other.facts)
        self.ablations += other.ablations
        self.tables += other.tables


class Bench:
    """One model, our front door to it and the seed notebook's pipeline on the same weights."""

    def __init__(self, resident: Model, image: Path, tokens: int, repeats: int) -> None:
        from transformers import pipeline

        assert isinstance(resident.runtime, Gemma4Runtime)
        self.resident = resident
        #: the runtime, whose caches the ablations switch
        self.backend: Gemma4Runtime = resident.runtime
        self.model = self.backend.model
        self.image = image
        self.tokens = tokens
        self.repeats = repeats
        self.vision = Vision(resident, ImageLoader(AccessPolicy.for_server([str(image.parent)])))
        self.options = forced(tokens)
        # The seed builds its pipeline from the hub id with device_map="auto", dtype="auto"; given the
        # loaded model instead, it runs the same weights in the same precision and attention
        # (tests/test_bench.py checks that against the seed's own call).
        self.pipe = pipeline("image-text-to-text", model=self.model, processor=self.backend.processor)
        # The seed's generation config: GenerationConfig.from_pretrained(MODEL_ID), the checkpoint's own.
        self.seed_config = copy.deepcopy(self.model.generation_config)
        self.seed_config.compile_config = None
        self.bytes_per_token = decode_bytes_per_token(self.model)
        self.bandwidth, self.bandwidth_source = memory_bandwidth(self.model.device)

    def ours(self, call: Callable[[], Any], tokens: int | None = None) -> tuple[Timing, Any]:
        return timed(self.model, tokens or self.tokens, call)

    def seed(self, messages: list[dict[str, Any]], budget: int, tokens: int | None = None) -> tuple[Timing, str]:
        """One call of the seed's code: its pipeline, its generation config, forced to ``tokens`` new tokens."""
        tokens = tokens or self.tokens
        config = copy.deepcopy(self.seed_config)
        config.max_new_tokens = config.min_new_tokens = tokens
        # our --compile must not reach the seed through the model's shared generation config
        kwargs = {"generation_config": config, "disable_compile": True}
        timing, out = timed(self.model, tokens, lambda: self.pipe(
            text=messages, generate_kwargs=kwargs, processor_kwargs={"max_soft_tokens": budget}, return_full_text=False
        ))
        return timing, out[0]["generated_text"]

    def eager(self) -> Any:
        """Eager attention, for the ablation that measures what SDPA buys (the seed runs SDPA)."""
        return attention(self.model, "eager")

    def messages(
        self, text: str, with_image: bool = True, history: Sequence[tuple[str, str, Sequence[str]]] = ()
    ) -> list[dict[str, Any]]:
        """What our model is sent, with the image as a path for the pipeline to load, as the seed does."""

        def content(paths: Sequence[str], words: str) -> list[dict[str, Any]]:
            return [*({"type": "image", "image": p} for p in paths), {"type": "text", "text": words}]

        messages = [{"role": role, "content": content(refs, said)} for role, said, refs in history]
        return [*messages, {"role": "user", "content": content([str(self.image)] if with_image else [], text)}]

    def fraction_of_bandwidth(self, tokens_per_s: float | None) -> float | None:
        return None if tokens_per_s is None else tokens_per_s * self.bytes_per_token / self.bandwidth


def sample_picture(path: Path) -> Path:
    """A 1024x768 picture with shapes and a line of text, so every task has something to look at."""
    image = Image.new("RGB", (1024, 768), (230, 230, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle([80, 90, 420, 380], fill=(200, 40, 40))
    draw.ellipse([560, 200, 900, 540], fill=(40, 90, 200))
    draw.text((120, 620), "HELLO WORLD 2026", fill=(0, 0, 0))
    image.save(path)
    return path


def warm(bench: Bench) -> None:
    """Untimed first calls on both sides: lazy initialisation is not what is compared."""
    bench.vision.describe([str(bench.image)], "x", options=bench.options)
    bench.seed(bench.messages("x"), 280)
    bench.backend.clear_caches()


def forced(tokens: int) -> GenerationOptions:
    """Exactly ``tokens`` new tokens: timing compares equal work."""
    return GenerationOptions(max_new_tokens=tokens, min_new_tokens=tokens)


def single(bench: Bench, budgets: Sequence[int] = (70, 280, 1120)) -> Outcome:
    """One describe on a cold backend at each budget: time to first token, decode rate, peak memory."""
    outcome = Outcome()
    path = str(bench.image)
    for budget in budgets:
        ours, seed = [], []
        for _ in range(bench.repeats):
            bench.backend.clear_caches()
            ours.append(bench.ours(lambda: bench.vision.describe([path], QUESTIONS[0], budget=budget, options=bench.options))[0])
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
        if bench.backend.compiled and budget == 280:
            outcome.facts["compiled_decode_fraction"] = outcome.facts[f"decode_fraction@{budget}"]
            outcome.facts["compiled_decode_speedup"] = outcome.facts[f"decode_speedup@{budget}"]
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
        for turn, question in enumerate(QUESTIONS):
            seed[turn].append(bench.seed(bench.messages(question, turn == 0, said[: 2 * turn]), budget)[0])
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
        ("ocr", lambda: vision.ocr(path, budget=budget, options=bench.options), gemma4.OCR),
        ("detect", lambda: vision.detect(path, LABELS, budget=budget, options=bench.options),
         gemma4.detect_text(LABELS)),
    ]
    ours: list[list[Timing]] = [[] for _ in steps]
    seed: list[list[Timing]] = [[] for _ in steps]
    for _ in range(bench.repeats):
        bench.backend.clear_caches()
        for n, (_, call, _) in enumerate(steps):
            ours[n].append(bench.ours(call)[0])
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


def budgets(bench: Bench, chosen: Sequence[int] = BUDGETS, lengths: Sequence[int] = (32, 256)) -> Outcome:
    """compare_budgets against one seed call per budget, at each answer length, with each budget's own costs.

    Ours reports per budget its encoding and its own prefill (up to its first token), and the
    decode the budgets share; the seed's per-budget figures are its time to first token (the
    pipeline's preprocessing, the vision tower and the prefill) and its decode.
    """
    path = str(bench.image)
    outcome = Outcome()
    for tokens in lengths:
        options = forced(tokens)
        ours, seed, runs, calls = [], [], [], []
        for _ in range(bench.repeats):
            bench.backend.clear_caches()
            started = time.perf_counter()
            result = bench.vision.compare_budgets(path, "describe", QUESTIONS[0], budgets=chosen, options=options)
            ours.append((time.perf_counter() - started) * 1000)
            runs.append([run.timings for run in result.runs])
            timings = [bench.seed(bench.messages(QUESTIONS[0]), budget, tokens)[0] for budget in chosen]
            seed.append(sum(t.total_ms for t in timings))
            calls.append(timings)
        name = f"compare_budgets ×{len(chosen)}, {tokens} tokens"
        total = Row(name, "total", "ms", statistics.median(ours), statistics.median(seed))
        rows = [total]
        for n, budget in enumerate(chosen):
            rows.append(Row(name, f"@{budget}: encode + prefill (ours) / time to first token (seed)", "ms",
                            statistics.median(r[n].preprocess_ms + (r[n].prefill_ms or 0.0) for r in runs),
                            statistics.median(c[n].ttft_ms for c in calls)))
        decode = statistics.median(r[0].decode_ms or 0.0 for r in runs)
        rows.append(Row(name, f"decode: one shared batch (ours) / {len(chosen)} decodes (seed)", "ms", decode,
                        statistics.median(sum(t.total_ms - t.ttft_ms for t in c) for c in calls)))
        # What batching cannot shrink: the five encodings and prefills, the same work on both sides.
        floor = statistics.median(sum(t.preprocess_ms + (t.prefill_ms or 0.0) for t in r) for r in runs)
        rows.append(Row(name, f"floor: the {len(chosen)} encodes + prefills alone (ours)", "ms", floor,
                        statistics.median(seed)))
        outcome.rows += rows
        outcome.facts[f"compare_ratio@{tokens}"] = total.ratio
        outcome.facts[f"compare_floor@{tokens}"] = ratio(floor, total.seed)
    return outcome


def padded_batch(resident: Model, ask: Ask, budgets: Sequence[int], options: GenerationOptions) -> None:
    """The budgets as one left-padded ``generate`` (every row prefilled at the longest row's length): the
    way compare_budgets ran before each row was prefilled alone, kept to measure what that bought."""
    backend = resident.runtime
    assert isinstance(backend, Gemma4Runtime)
    rows = [backend.encoded(resident.dialect.prompt(resident.check(replace(ask, budget=b)))) for b in budgets]
    batch = left_pad([row.inputs for row in rows], backend.processor.tokenizer.pad_token_id)
    features = [f for row in rows for f in row.features]
    backend.generate_batch(batch, options, budgets=budgets, watch=Stopwatch(), model_kwargs=image_inputs(features))


def ablations(bench: Bench, budget: int = 1120, budgets: Sequence[int] = BUDGETS) -> Outcome:
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

    def at_budgets(way: str) -> float:
        backend.clear_caches()
        ask = Ask("describe", (bench.vision.load_images([path])[0].input,), QUESTIONS[0])
        started = time.perf_counter()
        if way == "one at a time":
            prompts = [bench.resident.dialect.prompt(bench.resident.check(replace(ask, budget=b))) for b in budgets]
            LocalRuntime.generate_many(backend, prompts, bench.options)
        elif way == "padded":
            padded_batch(bench.resident, ask, budgets, bench.options)
        else:
            bench.resident.run_budgets(ask, budgets, bench.options)
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
    alone, padded, unpadded = (median_of(lambda way=way: at_budgets(way)) for way in ("one at a time", "padded", "rows"))
    found = [
        Ablation("SDPA attention (transformers' default; eager switched on to compare)",
                 f"cold describe @{budget}, time to first token", "ms", eager.ttft_ms, sdpa.ttft_ms),
        Ablation("vision cache", f"follow-up turn @{budget}, time to first token", "ms",
                 nothing.ttft_ms, vision_only.ttft_ms),
        Ablation("prefix reuse (with the vision cache)", f"follow-up turn @{budget}, time to first token", "ms",
                 vision_only.ttft_ms, both.ttft_ms),
        Ablation("one left-padded batch for the budgets (vs one at a time)", f"{len(budgets)} budgets, total", "ms",
                 alone, padded),
        Ablation("each budget prefilled alone, one shared decode (vs left-padded)", f"{len(budgets)} budgets, total",
                 "ms", padded, unpadded),
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
    from tools.model import load_model

    arguments = {"images": [str(image)], "prompt": "What is it?", "budget": 70, "max_new_tokens": 1}
    stdio = asyncio.run(_stdio_calls(checkpoint, image.parent, arguments, calls))
    vision = Vision(load_model(str(checkpoint)), ImageLoader(AccessPolicy.for_server([str(image.parent)])))
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

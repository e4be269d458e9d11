"""``python -m bench --suite gpu``: the figures that need a GPU, in one run of a few minutes.

On one H100 / H200 it builds a random-weight Gemma 4 E2B at real size in bf16 and measures, against
the seed's code as written on the same weights: batch-1 decode tokens/s and its fraction of the
memory-bandwidth limit, time to first token at each budget, follow-up turns, and compare_budgets
at two answer lengths; then it switches on compiled decoding (static cache, CUDA graphs) and
measures decode again. On a CPU (``--device cpu``) the same steps run on ``e2b-mini`` (E2B's
widths, head dims, layer pattern and KV sharing, few layers), shorter answers and the three lower
budgets, so that the whole command is proven end to end where no GPU is at hand; compiling is
then reported as skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import scenarios
from .models import build
from .report import report
from .scenarios import QUESTIONS, Ablation, Bench, Outcome, Row, Table, pct, ratio, sample_picture, warm


def run_suite(args: argparse.Namespace, workdir: Path, device: str) -> dict[str, Any]:
    cuda = device == "cuda"
    config = args.config or ("e2b" if cuda else "e2b-mini")
    tokens = args.tokens or (64 if cuda else 8)
    lengths = args.budget_tokens or ((32, 256) if cuda else (4, 16))
    budgets = scenarios.BUDGETS if cuda else (70, 140, 280)
    follow_budget = 1120 if cuda else 280
    repeats = args.repeats or 2
    stages: dict[str, float] = {}
    started = clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = round(now - clock, 1)
        clock = now
        print(f"{name}: {stages[name]} s (total {now - started:.0f} s)", file=sys.stderr, flush=True)

    picture = sample_picture(workdir / "picture.png")
    backend = build(config, device, workdir)
    if cuda:
        backend.warm_up()
    bench = Bench(backend, picture, tokens, repeats)
    warm(bench)
    stage("build and warm up")
    outcome = Outcome()
    steps = [
        ("describe at each budget", lambda: scenarios.single(bench, budgets)),
        ("compare_budgets", lambda: scenarios.budgets(bench, budgets, lengths)),
        ("follow-up turns", lambda: scenarios.conversation(bench, follow_budget)),
        ("compiled decoding", lambda: compiled(bench, outcome)),
    ]
    skipped = []
    for name, step in steps:
        # Past the limit the run stops short rather than overrun a lent machine; what ran is reported.
        if time.perf_counter() - started > args.time_limit:
            skipped.append(name)
            continue
        outcome.add(step())
        stage(name)
    if skipped:
        outcome.facts["skipped_past_time_limit"] = skipped
    outcome.tables.append(Table("stages of this run", ["stage", "seconds"], [[k, v] for k, v in stages.items()]))
    extra = {"suite": "gpu", "budget_tokens": list(lengths), "budgets": list(budgets),
             "stages_s": stages, "total_s": round(time.perf_counter() - started, 1)}
    return report(args, bench, config, device, outcome, extra)


def compiled(bench: Bench, before: Outcome, budget: int = 280) -> Outcome:
    """Decode at ``budget``, batch 1, after switching on compiled decoding; beside the eager figure already measured."""
    backend, path = bench.backend, str(bench.image)
    eager = next((r for r in before.rows if r.scenario == f"describe @{budget}" and r.metric == "decode"), None)
    if backend.model.device.type != "cuda":
        return Outcome(facts={"compiled": "skipped: compiled decoding needs a CUDA GPU"})
    started = time.perf_counter()
    try:
        backend.enable_compile()
        bench.resident.warm_up()  # records the CUDA graphs
    except Exception as exc:  # reported in the results: the other figures stand without it
        return Outcome(facts={"compiled": f"failed: {type(exc).__name__}: {exc}"[:500]})
    compile_s = time.perf_counter() - started
    timings = []
    for _ in range(bench.repeats):
        backend.clear_caches()
        timings.append(bench.ours(lambda: bench.vision.describe([path], QUESTIONS[0], budget=budget,
                                                                  options=bench.options))[0])
    rate = statistics.median(t.decode_tps or 0.0 for t in timings)
    seed_rate = eager.seed if eager else None
    rows = [
        Row(f"describe @{budget}, --compile", "decode", "tok/s", rate, seed_rate),
        Row(f"describe @{budget}, --compile", "decode / bandwidth limit", "%", pct(bench.fraction_of_bandwidth(rate)),
            pct(bench.fraction_of_bandwidth(seed_rate))),
        Row(f"describe @{budget}, --compile", "time to first token", "ms", statistics.median(t.ttft_ms for t in timings)),
    ]
    return Outcome(
        rows=rows,
        facts={"compiled": f"compiled and warmed up in {compile_s:.0f} s",
               "compiled_decode_fraction": bench.fraction_of_bandwidth(rate),
               "compiled_decode_speedup": ratio(rate, seed_rate)},
        ablations=[Ablation("compiled decoding on the static cache (--compile)", f"describe @{budget}, decode",
                            "tok/s", eager.ours if eager else None, rate)],
    )

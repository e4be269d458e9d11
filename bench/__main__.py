"""``python -m bench``: run every scenario, print the table, write the JSON (and a Markdown table).

    python -m bench --config tiny                       # CPU, the tiny test checkpoint
    python -m bench --config e2b --device cuda --compile --out bench-e2b.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from PIL import Image, ImageDraw  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from . import scenarios  # noqa: E402
from .models import CONFIGS, build, describe_model  # noqa: E402
from .scenarios import Outcome  # noqa: E402

UNITS = {"ms": "{:.1f}", "tok/s": "{:.1f}", "%": "{:.1f}", "MiB": "{:.1f}"}
# MCP first: its few milliseconds are measured best before the heavy scenarios have filled memory.
SCENARIOS = ("mcp", "single", "conversation", "tasks", "budgets", "ablations")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", *CONFIGS), default="tiny",
                        help="tiny test checkpoint, or random-weight Gemma 4 E2B / E4B at real size")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when there is one")
    parser.add_argument("--compile", action="store_true", help="our side decodes compiled on a static cache (CUDA)")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens per call (default: 32 tiny, 128 real)")
    parser.add_argument("--repeats", type=int, default=3, help="median over this many runs")
    parser.add_argument("--mcp-calls", type=int, default=50)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for torch, here and in the MCP server (1 on a small shared machine: waiting for "
        "busy cores costs more than a tiny model's work)",
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--out", default="bench.json", help="JSON results")
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    return parser.parse_args(argv)


def sample_picture(path: Path) -> Path:
    """A 1024x768 picture with shapes and a line of text, so every task has something to look at."""
    image = Image.new("RGB", (1024, 768), (230, 230, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle([80, 90, 420, 380], fill=(200, 40, 40))
    draw.ellipse([560, 200, 900, 540], fill=(40, 90, 200))
    draw.text((120, 620), "HELLO WORLD 2026", fill=(0, 0, 0))
    image.save(path)
    return path


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the MCP server process
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.compile and device != "cuda":
        raise SystemExit("--compile needs a CUDA GPU.")
    tokens = args.tokens or (32 if args.config == "tiny" else 128)
    picture = sample_picture(workdir / "picture.png")
    backend = build(args.config, device, workdir)
    if args.compile:
        backend.enable_compile()
    if device == "cuda":
        backend.warm_up()
    bench = scenarios.Bench(backend, picture, tokens, args.repeats)
    # Untimed first calls on both sides: lazy initialisation is not what is compared.
    bench.vision.describe([str(picture)], "x", options=bench.options)
    with bench.eager():
        bench.seed(bench.messages("x"), 280)
    outcome = Outcome()
    for name in args.scenarios:
        print(f"running {name} …", file=sys.stderr, flush=True)
        if name == "mcp":
            # The tiny checkpoint in both configurations: see mcp_overhead.
            checkpoint = workdir / "tiny" if args.config == "tiny" else build_tiny_checkpoint(workdir)
            part = scenarios.mcp_overhead(checkpoint, picture, args.mcp_calls)
        else:
            part = getattr(scenarios, name)(bench)
        outcome.rows += part.rows
        outcome.facts.update(part.facts)
        outcome.ablations += part.ablations
    return {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "config": {**describe_model(backend), "name": args.config},
        "settings": {
            "device": device, "compile": args.compile, "new_tokens_per_call": tokens, "repeats": args.repeats,
            "cpu_threads": torch.get_num_threads(),
            "decode_bytes_per_token": bench.bytes_per_token, "memory_bandwidth_bytes_per_s": bench.bandwidth,
            "memory_bandwidth_source": bench.bandwidth_source,
            "attention_kernels_by_head_dim": backend.attention_kernels,
        },
        "rows": [
            {"scenario": r.scenario, "metric": r.metric, "unit": r.unit, "ours": r.ours, "seed_style": r.seed,
             "ratio": r.ratio}
            for r in outcome.rows
        ],
        "ablations": [
            {"optimisation": a.optimisation, "measure": a.measure, "unit": a.unit, "without": a.without,
             "with": a.with_, "ratio": a.ratio}
            for a in outcome.ablations
        ],
        "targets": targets(outcome.facts, device, args.config),
        "facts": outcome.facts,
    }


def build_tiny_checkpoint(workdir: Path) -> Path:
    from tools.tiny import build_tiny

    return build_tiny(workdir / "tiny", "gemma4")


def targets(facts: dict[str, Any], device: str, config: str) -> list[dict[str, Any]]:
    """The issue's targets, each with whether this run is the kind of run it is stated for."""
    real_gpu = device == "cuda" and config == "e2b"

    def target(name: str, value: Any, ok: bool | None, applies: bool = True) -> dict[str, Any]:
        return {"target": name, "value": value, "met": ok, "stated_for_this_run": applies}

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    def at_least(value: float | None, limit: float) -> bool | None:
        return None if value is None else value >= limit

    vision = facts.get("follow_up_vision")
    return [
        target("follow-up turns: vision tower not run (vision cache hit)", vision,
               None if vision is None else vision == ["hit"]),
        target("turn-2 time to first token <= 25% of turn 1 (GPU, E2B, budget 1120)",
               facts.get("turn2_over_turn1"), at_most(facts.get("turn2_over_turn1"), 0.25), real_gpu),
        target("compare_budgets over five budgets <= 0.5x five seed-style calls",
               facts.get("compare_ratio"), at_most(facts.get("compare_ratio"), 0.5)),
        target("MCP overhead per call <= 5 ms median (loopback stdio)",
               facts.get("mcp_overhead_ms"), at_most(facts.get("mcp_overhead_ms"), 5.0)),
        target("decode >= 40% of the memory-bandwidth limit (GPU, E2B bf16, batch 1, budget 280)",
               facts.get("decode_fraction@280"), at_least(facts.get("decode_fraction@280"), 0.4), real_gpu),
        target("decode >= 2x the seed-style eager baseline (GPU, E2B bf16, batch 1, budget 280)",
               facts.get("decode_speedup@280"), at_least(facts.get("decode_speedup@280"), 2.0), real_gpu),
    ]


def cell(value: float | None, unit: str) -> str:
    return "–" if value is None else UNITS.get(unit, "{:.3g}").format(value)


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [r["scenario"], f"{r['metric']} ({r['unit']})", cell(r["ours"], r["unit"]), cell(r["seed_style"], r["unit"]),
         "–" if r["ratio"] is None else f"{r['ratio']:.2f}"]
        for r in results["rows"]
    ]


HEADERS = ["scenario", "metric", "ours", "seed-style", "ours / seed"]
ABLATION_HEADERS = ["optimisation", "measured on", "without", "with", "with / without"]


def ablation_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [a["optimisation"], f"{a['measure']} ({a['unit']})", cell(a["without"], a["unit"]), cell(a["with"], a["unit"]),
         "–" if a["ratio"] is None else f"{a['ratio']:.2f}"]
        for a in results.get("ablations", [])
    ]


def show(results: dict[str, Any], console: Console) -> None:
    config, settings = results["config"], results["settings"]
    title = (f"{config['name']} ({config['parameters'] / 1e9:.3f} B parameters, {config['dtype']}) on "
             f"{settings['device']}{', compiled' if settings['compile'] else ''}; "
             f"{settings['new_tokens_per_call']} new tokens per call, median of {settings['repeats']}")
    table = Table(*HEADERS, title=title)
    for row in table_rows(results):
        table.add_row(*row)
    console.print(table)
    if results.get("ablations"):
        parts = Table(*ABLATION_HEADERS, title="what each optimisation buys (ours, one switched off)")
        for row in ablation_rows(results):
            parts.add_row(*row)
        console.print(parts)
    checks = Table("target", "value", "met", "stated for this run", title="targets")
    for t in results["targets"]:
        checks.add_row(t["target"], str(t["value"]), str(t["met"]), str(t["stated_for_this_run"]))
    console.print(checks)


def markdown(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    if results.get("ablations"):
        lines += ["", "| " + " | ".join(ABLATION_HEADERS) + " |", "|" + "---|" * len(ABLATION_HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in ablation_rows(results)]
    lines += ["", "| target | value | met | stated for this run |", "|---|---|---|---|"]
    for t in results["targets"]:
        value = t["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {t['target']} | {shown} | {t['met']} | {t['stated_for_this_run']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory(prefix="vlm-bench-") as tmp:
        results = run(args, Path(tmp))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    show(results, Console(stderr=False))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

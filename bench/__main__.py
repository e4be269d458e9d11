"""``python -m bench``: run every scenario, print the tables, write the JSON (and Markdown).

    python -m bench --config tiny --threads 1           # CPU, the tiny test checkpoint
    python -m bench --suite gpu                         # one GPU: real-size E2B, with and without --compile
    python -m bench --suite gpu --device cpu            # the same suite on a CPU, reduced E2B (e2b-mini)
    python -m bench --peer vllm --threads 1             # ours beside vLLM on the tiny checkpoint (bench/peer.py)
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

from . import growth, peer, scenarios  # noqa: E402
from .models import CONFIGS, REDUCED, build, describe_model  # noqa: E402
from .scenarios import Outcome  # noqa: E402

UNITS = {"ms": "{:.1f}", "tok/s": "{:.1f}", "%": "{:.1f}", "MiB": "{:.1f}", "x": "{:.2f}"}
# MCP and HTTP first: their few milliseconds are measured best before the heavy scenarios have filled memory.
SCENARIOS = ("mcp", "http", "single", "conversation", "tasks", "budgets", "ablations", "long-chat", "memory")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("all", "gpu"), default="all",
                        help="all: every scenario; gpu: the GPU run (decode with and without --compile, time to "
                        "first token at each budget, follow-ups, compare_budgets), e2b on CUDA, e2b-mini on a CPU")
    parser.add_argument("--config", choices=("tiny", *CONFIGS, *REDUCED), default=None,
                        help="tiny test checkpoint, random-weight Gemma 4 E2B / E4B at real size, or E2B reduced "
                        "to few layers (default: tiny; for --suite gpu, e2b on CUDA and e2b-mini on a CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when there is one")
    parser.add_argument("--compile", action="store_true", help="our side decodes compiled on a static cache (CUDA)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="new tokens per call (default: 32 tiny, 128 real; gpu suite: 64 on CUDA, 8 on a CPU)")
    parser.add_argument("--budget-tokens", type=int, nargs="+", default=None,
                        help="answer lengths compare_budgets is measured at (default: 32 256)")
    parser.add_argument("--repeats", type=int, default=None, help="median over this many runs (default 3; gpu suite 2)")
    parser.add_argument("--mcp-calls", type=int, default=50)
    parser.add_argument("--time-limit", type=float, default=420,
                        help="gpu suite: seconds after which the remaining steps are skipped (and reported so)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads for torch, here and in the MCP server (1 on a small shared machine: waiting for "
        "busy cores costs more than a tiny model's work)",
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    peers = parser.add_argument_group("peer", "the same scenarios through our local runtime and through a serving engine")
    peers.add_argument("--peer", choices=("vllm",), default=None,
                       help="vllm: start vLLM (.venv-vllm) on the tiny checkpoint and run the peer scenarios against it")
    peers.add_argument("--peer-scenarios", nargs="+", choices=tuple(peer.SCENARIOS), default=list(peer.SCENARIOS))
    peers.add_argument("--peer-url", default=None,
                       help="a vLLM already serving --peer-model (its API root, e.g. http://127.0.0.1:8000/v1)")
    peers.add_argument("--peer-model", default=None, help="the checkpoint both sides run (default: a new tiny Gemma 4)")
    peers.add_argument("--vllm-python", default=None, help="vLLM's Python (default: .venv-vllm/bin/python)")
    peers.add_argument("--turns", type=int, default=20, help="turns of the growing conversation (default 20)")
    peers.add_argument("--clients", type=int, default=8, help="MCP clients at once (default 8)")
    peers.add_argument("--calls-per-client", type=int, default=3, help="describes each client makes (default 3)")
    parser.add_argument("--out", default="bench.json", help="JSON results")
    parser.add_argument("--markdown", default=None, help="also write the tables as Markdown here")
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

    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the MCP server process
    if args.peer:
        return peer.main(args, workdir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.compile and device != "cuda":
        raise SystemExit("--compile needs a CUDA GPU.")
    if args.suite == "gpu":
        from .gpu import run_suite

        return run_suite(args, workdir, device)
    config = args.config or "tiny"
    tokens = args.tokens or (32 if config == "tiny" else 128)
    repeats = args.repeats or 3
    lengths = args.budget_tokens or (32, 256)
    picture = sample_picture(workdir / "picture.png")
    backend = build(config, device, workdir)
    if args.compile:
        backend.runtime.enable_compile()
    if device == "cuda":
        backend.warm_up()
    bench = scenarios.Bench(backend, picture, tokens, repeats)
    warm(bench)
    outcome = Outcome()
    for name in args.scenarios:
        print(f"running {name} …", file=sys.stderr, flush=True)
        if name in ("mcp", "http"):
            # The tiny checkpoint in every configuration: see mcp_overhead.
            checkpoint = workdir / "tiny" if config == "tiny" else build_tiny_checkpoint(workdir)
            if name == "mcp":
                part = scenarios.mcp_overhead(checkpoint, picture, args.mcp_calls)
            else:
                part = growth.http_clients(checkpoint, workdir, tokens=tokens)
        elif name == "budgets":
            part = scenarios.budgets(bench, lengths=lengths)
        elif name == "long-chat":
            part = growth.long_chat(bench)
        elif name == "memory":
            part = growth.memory(bench)
        else:
            part = getattr(scenarios, name)(bench)
        outcome.add(part)
    return report(args, bench, config, device, outcome, {"suite": "all", "budget_tokens": list(lengths)})


def warm(bench: scenarios.Bench) -> None:
    """Untimed first calls on both sides: lazy initialisation is not what is compared."""
    bench.vision.describe([str(bench.image)], "x", options=bench.options)
    bench.seed(bench.messages("x"), 280)
    bench.backend.clear_caches()


def report(args: argparse.Namespace, bench: scenarios.Bench, config: str, device: str, outcome: Outcome,
           extra: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    backend = bench.backend  # the runtime
    return {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "config": {**describe_model(bench.resident), "name": config},
        "settings": {
            "device": device, "compile": backend.compiled, "new_tokens_per_call": bench.tokens,
            "repeats": bench.repeats, "cpu_threads": torch.get_num_threads(),
            "baseline": "the seed notebook's pipeline('image-text-to-text') with the checkpoint's generation config "
                        f"and transformers' default attention ({bench.model.config._attn_implementation})",
            "decode_bytes_per_token": bench.bytes_per_token, "memory_bandwidth_bytes_per_s": bench.bandwidth,
            "memory_bandwidth_source": bench.bandwidth_source,
            "attention_kernels_by_head_dim": backend.attention_kernels,
            **extra,
        },
        "rows": [
            {"scenario": r.scenario, "metric": r.metric, "unit": r.unit, "ours": r.ours, "seed": r.seed,
             "ratio": r.ratio}
            for r in outcome.rows
        ],
        "ablations": [
            {"optimisation": a.optimisation, "measure": a.measure, "unit": a.unit, "without": a.without,
             "with": a.with_, "ratio": a.ratio}
            for a in outcome.ablations
        ],
        "tables": [{"title": t.title, "headers": t.headers, "rows": t.rows} for t in outcome.tables],
        "targets": targets(outcome.facts, device, config),
        "facts": outcome.facts,
    }


def build_tiny_checkpoint(workdir: Path) -> Path:
    from tools.tiny import build_tiny

    return build_tiny(workdir / "tiny", "gemma4")


def targets(facts: dict[str, Any], device: str, config: str) -> list[dict[str, Any]]:
    """The targets, against the seed's code as written; each says whether this run is the kind it is stated for.

    A target whose fact this run did not measure is reported with value None and met None.
    """
    real_gpu = device == "cuda" and config in CONFIGS

    def target(name: str, value: Any, ok: bool | None, applies: bool = True) -> dict[str, Any]:
        return {"target": name, "value": value, "met": ok, "stated_for_this_run": applies}

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    def at_least(value: float | None, limit: float) -> bool | None:
        return None if value is None else value >= limit

    vision = facts.get("follow_up_vision")
    under = facts.get("caches_under_caps")
    # compare_budgets at the longest and the shortest answers measured (32 and 256 unless told otherwise)
    lengths = sorted(int(key.split("@")[1]) for key in facts if key.startswith("compare_ratio@"))
    long, short = (lengths[-1], lengths[0]) if lengths else (256, 32)
    return [
        target("follow-up turns: vision tower not run (vision cache hit)", vision,
               None if vision is None else vision == ["hit"]),
        target("turn-2 time to first token <= 25% of turn 1 (budget 1120; stated for E2B on a GPU)",
               facts.get("turn2_over_turn1"), at_most(facts.get("turn2_over_turn1"), 0.25), real_gpu),
        target("turn 20 of one conversation reaches its first token within 2x of turn 2",
               facts.get("long_chat_late_over_turn2"), at_most(facts.get("long_chat_late_over_turn2"), 2.0)),
        target(f"compare_budgets at {long} new tokens <= 0.5x one seed call per budget",
               facts.get(f"compare_ratio@{long}"), at_most(facts.get(f"compare_ratio@{long}"), 0.5)),
        target(f"compare_budgets at {short} new tokens <= 1.0x one seed call per budget (never slower)",
               facts.get(f"compare_ratio@{short}"), at_most(facts.get(f"compare_ratio@{short}"), 1.0)),
        target("caches stay under their caps over 50 turns and 100 distinct images", under, under),
        target("4 HTTP clients x 10 calls take no longer in total than the 40 calls one after another (+10%)",
               facts.get("http_total_ratio"), at_most(facts.get("http_total_ratio"), 1.1)),
        target("MCP overhead per call <= 5 ms median (loopback stdio)",
               facts.get("mcp_overhead_ms"), at_most(facts.get("mcp_overhead_ms"), 5.0)),
        target("decode >= 40% of the memory-bandwidth limit (E2B bf16, batch 1, budget 280, --compile; GPU)",
               facts.get("compiled_decode_fraction"), at_least(facts.get("compiled_decode_fraction"), 0.4), real_gpu),
        target("decode >= 2x the seed's (E2B bf16, batch 1, budget 280, --compile; GPU)",
               facts.get("compiled_decode_speedup"), at_least(facts.get("compiled_decode_speedup"), 2.0), real_gpu),
    ]


def cell(value: float | None, unit: str) -> str:
    return "–" if value is None else UNITS.get(unit, "{:.3g}").format(value)


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [r["scenario"], f"{r['metric']} ({r['unit']})", cell(r["ours"], r["unit"]), cell(r["seed"], r["unit"]),
         "–" if r["ratio"] is None else f"{r['ratio']:.2f}"]
        for r in results["rows"]
    ]


HEADERS = ["scenario", "metric", "ours", "seed as written", "ours / seed"]
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
        parts = Table(*ABLATION_HEADERS, title="ablations: what each optimisation buys (ours, one switched off)")
        for row in ablation_rows(results):
            parts.add_row(*row)
        console.print(parts)
    for grown in results.get("tables", []):
        extra = Table(*grown["headers"], title=grown["title"])
        for row in grown["rows"]:
            extra.add_row(*map(str, row))
        console.print(extra)
    checks = Table("target", "value", "met", "stated for this run", title="targets")
    for t in results["targets"]:
        checks.add_row(t["target"], str(t["value"]), str(t["met"]), str(t["stated_for_this_run"]))
    console.print(checks)


def markdown(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    if results.get("ablations"):
        lines += ["", "Ablations (ours, one optimisation switched off):", ""]
        lines += ["| " + " | ".join(ABLATION_HEADERS) + " |", "|" + "---|" * len(ABLATION_HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in ablation_rows(results)]
    for grown in results.get("tables", []):
        lines += ["", f"{grown['title']}:", "", "| " + " | ".join(grown["headers"]) + " |",
                  "|" + "---|" * len(grown["headers"])]
        lines += ["| " + " | ".join(map(str, row)) + " |" for row in grown["rows"]]
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
    if results.get("peer"):
        peer.show(results)
    else:
        show(results, Console(stderr=False))
    if args.markdown:
        Path(args.markdown).write_text((peer.markdown if results.get("peer") else markdown)(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

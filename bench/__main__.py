"""``python -m bench``: run every scenario, print the tables, write the JSON (and Markdown).

    python -m bench --config tiny --threads 1           # CPU, the tiny test checkpoint
    python -m bench --suite gpu                         # one GPU: real-size E2B, with and without --compile
    python -m bench --suite gpu --device cpu            # the same suite on a CPU, reduced E2B (e2b-mini)
    python -m bench --peer vllm --threads 1             # ours beside vLLM on the tiny checkpoint (bench/peer.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from . import growth, peer, scenarios  # noqa: E402
from .models import CONFIGS, REDUCED, build  # noqa: E402
from .report import report  # noqa: E402
from .scenarios import Outcome, sample_picture, warm  # noqa: E402

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


def build_tiny_checkpoint(workdir: Path) -> Path:
    from tools.tiny import build_tiny

    return build_tiny(workdir / "tiny", "gemma4")


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

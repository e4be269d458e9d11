"""What a run writes: the machine, the model, the settings, every row and table, and the targets
checked against the facts measured (``python -m bench`` and its GPU suite both report this way)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from typing import Any

from .models import CONFIGS, describe_model
from .scenarios import Bench, Outcome


def report(args: argparse.Namespace, bench: Bench, config: str, device: str, outcome: Outcome,
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

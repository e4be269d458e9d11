"""The benchmark's scenarios run and report both sides; timings themselves are never asserted."""

from __future__ import annotations

import json

import pytest

from bench import scenarios
from bench.__main__ import main, markdown, targets, sample_picture
from bench.models import CONFIGS, REAL_VOCAB, build, describe_model
from tools.tiny import gemma4_model, gemma4_processor


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench")
    backend = build("tiny", "cpu", workdir)
    return scenarios.Bench(backend, sample_picture(workdir / "picture.png"), tokens=3, repeats=1)


@pytest.mark.parametrize(
    ("run", "rows"),
    [
        (lambda b: scenarios.single(b, (70,)), 4),
        (lambda b: scenarios.conversation(b, 70), 5),
        (lambda b: scenarios.tasks(b, 70), 4),
        (lambda b: scenarios.budgets(b, (70, 140)), 1),
    ],
)
def test_scenarios_measure_ours_and_the_seed_style_baseline(bench, run, rows):
    outcome = run(bench)
    assert len(outcome.rows) == rows
    for row in outcome.rows:
        assert row.ours is not None and row.seed is not None and row.ratio is not None, row


def test_ablations_switch_one_optimisation_off_and_restore_it(bench):
    kept = bench.backend.prefix_cache
    found = scenarios.ablations(bench, 70).ablations
    assert [a.optimisation for a in found] == [
        "SDPA attention (not eager)", "vision cache", "prefix reuse (with the vision cache)", "one batch for the budgets"
    ]
    assert all(a.without and a.with_ and a.ratio for a in found)
    assert bench.backend.prefix_cache is kept and bench.model.config._attn_implementation == "sdpa"


def test_follow_ups_hit_the_vision_cache(bench):
    facts = scenarios.conversation(bench, 70).facts
    assert facts["follow_up_vision"] == ["hit"] and facts["turn2_over_turn1"] > 0


def test_the_seed_style_baseline_runs_eager_and_leaves_the_model_as_it_was(bench):
    seen = []
    hook = bench.model.register_forward_hook(lambda *_: seen.append(bench.model.config._attn_implementation))
    with bench.eager():
        bench.seed(bench.messages("x"), 70)
    hook.remove()
    assert set(seen) == {"eager"} and bench.model.config._attn_implementation == "sdpa"


def test_mcp_overhead_is_a_stdio_call_minus_the_same_call_in_process(tiny_gemma4, tmp_path):
    outcome = scenarios.mcp_overhead(tiny_gemma4, sample_picture(tmp_path / "p.png"), calls=2)
    stdio, local, overhead = (row.ours for row in outcome.rows)
    assert overhead == pytest.approx(stdio - local) and outcome.facts["mcp_overhead_ms"] == overhead


def test_the_real_size_configs_have_the_published_parameter_counts():
    import torch

    processor, ids = gemma4_processor()
    counts = {}
    for name in CONFIGS:
        with torch.device("meta"):
            model = gemma4_model(processor, ids, CONFIGS[name], {}, vocab_size=REAL_VOCAB)
        total = sum(p.numel() for p in model.parameters())
        per_layer = model.model.language_model.embed_tokens_per_layer.weight.numel()
        counts[name] = (round(total / 1e9, 1), round((total - per_layer) / 1e9, 1))
    # without the audio tower (about 0.3 B), which images never use
    assert counts == {"e2b": (4.8, 2.4), "e4b": (7.6, 4.8)}


def test_targets_say_which_runs_they_are_stated_for():
    facts = {"follow_up_vision": ["hit"], "turn2_over_turn1": 0.1, "compare_ratio": 0.6, "mcp_overhead_ms": 2.0,
             "decode_fraction@280": 0.5, "decode_speedup@280": 3.0}
    cpu = {t["target"]: (t["met"], t["stated_for_this_run"]) for t in targets(facts, "cpu", "tiny")}
    gpu = {t["target"]: t["stated_for_this_run"] for t in targets(facts, "cuda", "e2b")}
    assert [met for met, _ in cpu.values()] == [True, True, False, True, True, True]
    assert [stated for _, stated in cpu.values()] == [True, False, True, True, False, False]
    assert all(gpu.values())


def test_the_command_writes_json_and_markdown(tmp_path, capsys):
    out, table = tmp_path / "b.json", tmp_path / "b.md"
    argv = ["--config", "tiny", "--tokens", "2", "--repeats", "1", "--scenarios", "tasks", "--out", str(out),
            "--markdown", str(table), "--threads", "1"]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert {"machine", "config", "settings", "rows", "targets"} <= results.keys()
    assert results["config"]["name"] == "tiny" and results["settings"]["device"] == "cpu"
    assert table.read_text() == markdown(results)
    assert "describe→ocr→detect" in capsys.readouterr().out


def test_model_description_names_the_dimensions(bench):
    described = describe_model(bench.backend)
    assert described["text"]["num_hidden_layers"] == 2 and described["head_dims"] == [16]

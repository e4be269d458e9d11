"""The benchmark's scenarios run and report both sides; timings themselves are never asserted."""

from __future__ import annotations

import json

import pytest

from bench import growth, peer, scenarios
from bench.__main__ import main, markdown
from bench.report import targets
from bench.scenarios import sample_picture
from bench.models import CONFIGS, REAL_VOCAB, build, describe_model
from tools.tiny.gemma4 import gemma4_model, gemma4_processor


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
        # per answer length: the total, each budget's own costs, the shared decode, the floor
        (lambda b: scenarios.budgets(b, (70, 140), (2, 3)), 2 * 5),
    ],
)
def test_scenarios_measure_ours_and_the_seed_style_baseline(bench, run, rows):
    outcome = run(bench)
    assert len(outcome.rows) == rows
    for row in outcome.rows:
        assert row.ours is not None and row.seed is not None and row.ratio is not None, row


def test_ablations_switch_one_optimisation_off_and_restore_it(bench):
    kept = bench.backend.prefix_cache
    found = scenarios.ablations(bench, 70, (70, 140)).ablations
    assert [a.optimisation.split(" (")[0] for a in found] == [
        "SDPA attention", "vision cache", "prefix reuse", "one left-padded batch for the budgets",
        "each budget prefilled alone, one shared decode",
    ]
    assert all(a.without and a.with_ and a.ratio for a in found)
    assert bench.backend.prefix_cache is kept and bench.model.config._attn_implementation == "sdpa"


def test_compare_budgets_rows_carry_each_budgets_own_prefill(bench):
    outcome = scenarios.budgets(bench, (70, 280), (2,))
    own = [row for row in outcome.rows if row.metric.startswith("@")]
    assert [row.metric.split(":")[0] for row in own] == ["@70", "@280"]
    # the higher budget encodes and prefills far more, on both sides: not one figure copied to every row
    assert own[0].ours != own[1].ours and own[0].seed != own[1].seed
    assert set(outcome.facts) == {"compare_ratio@2", "compare_floor@2"}


def test_follow_ups_hit_the_vision_cache(bench):
    facts = scenarios.conversation(bench, 70).facts
    assert facts["follow_up_vision"] == ["hit"] and facts["turn2_over_turn1"] > 0


def test_the_seed_baseline_runs_the_attention_the_seeds_own_code_gets(bench, tiny_gemma4):
    from transformers import pipeline

    # the seed's call as written, on a checkpoint of the same kind
    seeds = pipeline("image-text-to-text", model=str(tiny_gemma4), device_map="auto", dtype="auto")
    seen = []
    hook = bench.model.register_forward_hook(lambda *_: seen.append(bench.model.config._attn_implementation))
    bench.seed(bench.messages("x"), 70)
    hook.remove()
    assert set(seen) == {seeds.model.config._attn_implementation} == {"sdpa"}
    assert bench.pipe.model.dtype == seeds.model.dtype
    # the checkpoint's own generation config, not ours
    assert bench.seed_config.do_sample == seeds.model.generation_config.do_sample


def test_eager_attention_is_only_an_ablation_and_is_restored(bench):
    with bench.eager():
        assert bench.model.config._attn_implementation == "eager"
    assert bench.model.config._attn_implementation == "sdpa"


def test_growth_scenarios_print_their_tables(bench):
    chat = growth.long_chat(bench, turns=3, budget=70, shown=(1, 2, 3))
    [table] = chat.tables
    assert [row[0] for row in table.rows] == [1, 2, 3] and chat.facts["long_chat_late_over_turn2"] > 0
    # later turns resume from the earlier ones
    assert table.rows[2][2] > 0
    memory = growth.memory(bench, turns=2, images=3, budget=70, tokens=2)
    [table] = memory.tables
    assert [row[:2] for row in table.rows] == [["start", 0], ["turns", 1], ["turns", 2], ["images", 1], ["images", 3]]
    assert memory.facts["caches_under_caps"] is True


def test_http_clients_at_once_and_one_after_another(tiny_gemma4, tmp_path):
    outcome = growth.http_clients(tiny_gemma4, tmp_path, clients=2, calls=2, tokens=1, budget=70)
    [table] = outcome.tables
    assert [row[1] for row in table.rows] == [4, 4]
    assert all(row[2] > 0 and row[4] >= row[3] for row in table.rows)


@pytest.mark.parametrize(("values", "expected"), [([5.0], 5.0), (list(map(float, range(1, 21))), 19.0),
                                                  (list(map(float, range(1, 41))), 38.0)])
def test_p95_is_the_nearest_rank(values, expected):
    assert growth.p95(values) == expected


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
    facts = {"follow_up_vision": ["hit"], "turn2_over_turn1": 0.1, "long_chat_late_over_turn2": 2.5,
             "compare_ratio@256": 0.3, "compare_ratio@32": 1.2, "caches_under_caps": True, "http_total_ratio": 1.0,
             "mcp_overhead_ms": 2.0, "compiled_decode_fraction": 0.5, "compiled_decode_speedup": 3.0}
    cpu = [(t["met"], t["stated_for_this_run"]) for t in targets(facts, "cpu", "tiny")]
    gpu = {t["target"]: t["stated_for_this_run"] for t in targets(facts, "cuda", "e2b")}
    assert [met for met, _ in cpu] == [True, True, False, True, False, True, True, True, True, True]
    assert [stated for _, stated in cpu] == [True, False, True, True, True, True, True, True, False, False]
    assert all(gpu.values())
    # what a run did not measure is neither met nor missed
    assert {t["met"] for t in targets({}, "cpu", "tiny")} == {None}


def test_the_command_writes_json_and_markdown(tmp_path, capsys):
    out, table = tmp_path / "b.json", tmp_path / "b.md"
    argv = ["--config", "tiny", "--tokens", "2", "--repeats", "1", "--scenarios", "tasks", "--out", str(out),
            "--markdown", str(table), "--threads", "1"]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert {"machine", "config", "settings", "rows", "targets", "tables"} <= results.keys()
    assert results["config"]["name"] == "tiny" and results["settings"]["device"] == "cpu"
    assert table.read_text() == markdown(results)
    printed = capsys.readouterr().out
    assert "targets" in printed and "describe" in printed


def test_model_description_names_the_dimensions(bench):
    described = describe_model(bench.resident)
    assert described["text"]["num_hidden_layers"] == 2 and described["head_dims"] == [32]


def test_the_gpu_suite_runs_end_to_end_in_its_cpu_mode(tiny_gemma4, tmp_path, capsys):
    # The tiny checkpoint keeps this fast; `--suite gpu --device cpu` alone builds the reduced E2B.
    out, table = tmp_path / "g.json", tmp_path / "g.md"
    argv = ["--suite", "gpu", "--device", "cpu", "--config", "tiny", "--tokens", "2", "--budget-tokens", "2", "3",
            "--repeats", "1", "--out", str(out), "--markdown", str(table), "--threads", "1"]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["settings"]["suite"] == "gpu" and results["facts"]["compiled"].startswith("skipped")
    scenarios_seen = {row["scenario"] for row in results["rows"]}
    assert {"describe @70", "describe @280", "4-turn chat @280", "compare_budgets ×3, 2 tokens",
            "compare_budgets ×3, 3 tokens"} <= scenarios_seen
    assert list(results["settings"]["stages_s"]) == [
        "build and warm up", "describe at each budget", "compare_budgets", "follow-up turns", "compiled decoding"
    ]
    assert table.read_text() == markdown(results)


def test_the_reduced_e2b_keeps_e2bs_shapes():
    import torch

    from bench.models import REDUCED

    text, vision, vocab = REDUCED["e2b-mini"]
    processor, ids = gemma4_processor()
    with torch.device("meta"):
        model = gemma4_model(processor, ids, text, vision, vocab_size=vocab)
    from tools.runtimes.accel import head_dims

    config = model.config.text_config
    real = CONFIGS["e2b"]
    widths = ("hidden_size", "intermediate_size", "num_key_value_heads", "num_attention_heads", "sliding_window",
              "hidden_size_per_layer_input", "use_double_wide_mlp")
    assert {k: getattr(config, k) for k in widths} == {k: real[k] for k in widths}
    assert head_dims(config) == [256, 512]
    assert config.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert config.num_kv_shared_layers == 2 and model.config.vision_config.hidden_size == 768


def test_the_gpu_suite_stops_short_at_its_time_limit_and_says_so(tmp_path):
    out = tmp_path / "g.json"
    argv = ["--suite", "gpu", "--device", "cpu", "--config", "tiny", "--tokens", "2", "--repeats", "1",
            "--time-limit", "0", "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["facts"]["skipped_past_time_limit"] == [
        "describe at each budget", "compare_budgets", "follow-up turns", "compiled decoding"
    ]
    assert results["rows"] == [] and list(results["settings"]["stages_s"]) == ["build and warm up"]


def test_ocr_tiles_bench_pages_and_score(monkeypatch, capsys):
    from bench import ocr_tiles

    assert ocr_tiles.score("ab c", "abc") == (3, 0.0)
    assert ocr_tiles.score("", "abcd") == (0, 1.0)
    assert ocr_tiles.score("abXd", "abcd")[0] == 3
    page = ocr_tiles.make_page((400, 300), 12, "latin")
    if page is not None:  # a machine without the font skips, as the bench does
        assert page.image.size == (400, 300) and page.text.strip() and page.font_px == 12
    monkeypatch.setitem(ocr_tiles.FONTS, "cjk", ["/no/such/font.ttc"])
    assert ocr_tiles.make_page((400, 300), 12, "cjk") is None
    if ocr_tiles.RapidOcr.available():
        assert ocr_tiles.main(["--scripts", "cjk"]) == 0
        assert "skipping cjk: no font found; install fonts-noto-cjk" in capsys.readouterr().err


def test_ocr_tiles_bench_prints_the_three_readings_of_a_page(tmp_path, capsys):
    from bench import ocr_tiles

    if not ocr_tiles.RapidOcr.available() or ocr_tiles.font_path("latin") is None:
        pytest.skip("needs the ocr extra and DejaVu Sans")
    table = tmp_path / "table.md"
    assert ocr_tiles.main(["--sizes", "600x300", "--fonts", "20", "--scripts", "latin", "--markdown", str(table)]) == 0
    header, rule, row = table.read_text().splitlines()
    assert header.startswith("| script | page | text px | characters | as written: recovered")
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:3] == ["latin", "600x300", "20"] and cells[-1] == "1"  # a small page is not tiled
    # as written, whole, tiled: each "N (P%)", an error and seconds
    assert len(cells) == 14 and all(cells[i].endswith("%)") for i in (4, 7, 10))
    assert row in capsys.readouterr().out


def test_the_extract_benchmark_measures_both_sides(tmp_path, capsys):
    """The grammar's overhead benchmark, at its smallest: every row it prints has a measurement."""
    from bench.extract import main as extract_main

    out = tmp_path / "extract.json"
    assert extract_main(["--tokens", "8", "--repeats", "1", "--no-big-vocab", "--no-kernels", "--out", str(out)]) == 0
    tiny = json.loads(out.read_text())["tiny"]
    assert tiny["n8"]["plain_runs_ms"] and tiny["n8"]["constrained_runs_ms"] and tiny["n8"]["processor_call_median_ms"] > 0
    assert tiny["receipt_end_to_end"]["tokens"] > 0 and tiny["receipt_matcher_compile_ms"] > 0
    assert "8 tokens: overhead per token" in capsys.readouterr().out


def test_the_media_benchmark_runs_both_sides_on_the_same_pages_and_frames(tmp_path):
    """bench/media.py: a PDF read and a clip described, ours against the seed's way, each side measured."""
    from bench import media

    out = tmp_path / "media.json"
    assert media.main(["--pages", "2", "--frames", "3", "--tokens", "2", "--flat", "--repeats", "1",
                       "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["scenario"] for row in rows] == ["ocr, 2-page PDF", "describe, 3-frame clip"]
    assert all(row["ours_s"] > 0 and row["seed_s"] > 0 for row in rows)


# -- the peer: vLLM beside ours (bench/peer.py); the run against a real vLLM is in test_vllm.py ----------


def test_the_peer_run_says_how_to_get_vllm_when_it_is_missing(tmp_path):
    missing = tmp_path / "no-vllm" / "python"
    with pytest.raises(SystemExit, match=r"--peer vllm needs vLLM at .*no-vllm/python: build the vLLM environment "
                                         r"once with `bash \.ci/vllm-env`"):
        main(["--peer", "vllm", "--vllm-python", str(missing), "--out", str(tmp_path / "peer.json")])
    assert not (tmp_path / "peer.json").exists()


def test_both_sides_get_the_same_pictures_and_none_twice(tmp_path):
    ours, theirs = peer.Side("ours", "u", tmp_path), peer.Side("vLLM", "v", tmp_path)
    first, second = ours.fresh(2), ours.fresh()
    assert len(set(first + second)) == 3 and theirs.fresh(3) == first + second
    from PIL import Image

    pixels = [Image.open(path).tobytes() for path in first + second]
    assert len(set(pixels)) == 3 and Image.open(second[0]).size == peer.SIZE


def test_peer_rows_put_ours_beside_vllm_with_their_tokens_and_notes():
    ours, theirs = peer.Runs(), peer.Runs(queried=1000, found=800)
    for ms, side in ((300.0, ours), (100.0, theirs)):
        side.add("turn 1", ms, 32)
        side.add("turn 1", 3 * ms, 32)
        side.add("turn 2", ms / 10, 32)
    rows = peer.rows_of("follow-up", [ours, theirs], [("turn 1", "turn 1"), ("turn 2", "turn 2")], note="why")
    assert [(r.ours, r.peer, r.ratio, r.tokens) for r in rows] == [(600.0, 200.0, 3.0, (32, 32)), (30.0, 10.0, 3.0, (32, 32))]
    assert [r.note for r in rows] == ["why", "vLLM's prefix cache served 80% of its prompt tokens"]
    results = {"rows": [{"scenario": r.scenario, "metric": r.metric, "unit": r.unit, "ours": r.ours, "vllm": r.peer,
                         "ratio": r.ratio, "tokens_ours": r.tokens[0], "tokens_vllm": r.tokens[1], "note": r.note}
                        for r in rows],
               "load_average": {"min": 0.5, "median": 1.0, "max": 2.0}, "settings": {"cpus": 2}}
    table = peer.markdown(results)
    assert "| follow-up | turn 1 | 600 | 200 | 3.00 | 32 / 32 | why |" in table
    assert "median 1.0, 0.5 to 2.0, on 2 CPUs" in table

"""vlm-agent against a real vLLM, through the doors users take: the console script, a real
`vlm-agent serve` spoken to in raw stdio, and `vlm-agent run`.

Three vLLM servers start at once when the module starts (each 60-140 s and about 4 GB): the
docs' Gemma 4 command and the docs' Qwen3-VL command (tests/vllm.py: the command of
docs/scaling.md as printed, on the tiny checkpoints), and a bare one, the Gemma 4 command
without the budget and tool flags, for the refusals and for an engine that dies and comes back.

Random weights write gibberish, so answers are not asserted, only plumbing: the engine's own
prompt-token counts show the budgets, images and history reached it. Where a test needs a
particular answer (boxes, a tool call) it scripts the model with vLLM's structured outputs
through --api-extra-body: `{"choice": [text]}` makes the only possible answer that text, and a
strong logit bias on the special tokens makes the model write Gemma 4's tool-call markers as
the tokens the engine's parser reads, not spelled out in bytes.

Skipped, saying how to build it, when .venv-vllm is absent (`bash .ci/vllm-env` builds it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import sample_image, tiny_checkpoint
from tests.hardening import VLM_AGENT, check_tool_error
from tests.raw import Calls, RawStdio, call, raw_stdio
from tests.vllm import API_KEY, ROOT, Vllm, require_vllm, serve_docs_command

require_vllm()

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]

GEMMA4 = "google/gemma-4-E2B-it"
QWEN3_VL = "Qwen/Qwen3-VL-8B-Instruct"
#: the docs' flags the bare engine goes without
FEATURE_FLAGS = ("--trust-request-mm-kwargs", "--enable-auto-tool-choice", "--tool-call-parser", "gemma4")
#: Gemma 4's image tokens for a 64 x 48 image at each budget (its resizing rule; FACTS, test_gemma4)
GEMMA4_TOKENS_64x48 = {70: 63, 140: 130, 280: 266, 560: 540, 1120: 1064}
BOXES = '[{"box_2d":[100,200,500,600],"label":"cat"}]'
QWEN_BOXES = '[{"bbox_2d":[100,200,500,600],"label":"cat"}]'
#: both box answers, in pixels of a 640 x 480 image: Gemma's y-first grid, Qwen's x-first one
GEMMA4_BOX = [128, 48, 384, 240]
QWEN_BOX = [64, 96, 320, 288]

tiny_qwen3_vl = tiny_checkpoint("qwen3_vl")


@dataclass
class Engines:
    gemma4: Vllm
    qwen3_vl: Vllm
    bare: Vllm


@pytest.fixture(scope="module")
def engines(tiny_gemma4: Path, tiny_qwen3_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """The three servers, launched together so their start-ups overlap; each is waited for on first use."""
    logs = tmp_path_factory.mktemp("vllm-logs")
    started = Engines(
        serve_docs_command("gemma4", GEMMA4, tiny_gemma4, logs),
        serve_docs_command("qwen3_vl", QWEN3_VL, tiny_qwen3_vl, logs),
        serve_docs_command("bare", GEMMA4, tiny_gemma4, logs, without=FEATURE_FLAGS),
    )
    try:
        yield started
    finally:
        for server in (started.gemma4, started.qwen3_vl, started.bare):
            server.stop()


@pytest.fixture(scope="module")
def gemma4(engines: Engines) -> Vllm:
    return engines.gemma4.wait_ready() if not engines.gemma4.ready_s else engines.gemma4


@pytest.fixture(scope="module")
def qwen3_vl(engines: Engines) -> Vllm:
    return engines.qwen3_vl.wait_ready() if not engines.qwen3_vl.ready_s else engines.qwen3_vl


@pytest.fixture(scope="module")
def bare(engines: Engines) -> Vllm:
    return engines.bare.wait_ready() if not engines.bare.ready_s else engines.bare


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vllm-pictures")
    sample_image().save(root / "small.png")  # 64 x 48
    sample_image(640, 480).save(root / "street.png")
    return root


def engine_flags(server: Vllm, family: str = "gemma4", budgets: bool = True, extra: dict | None = None) -> list[str]:
    """vlm-agent's flags for ``server``, as docs/scaling.md gives them."""
    flags = ["--backend", "openai", "--base-url", server.url, "--model", server.model, "--api-family", family]
    flags += ["--budgets-supported"] if budgets else []
    return flags + (["--api-extra-body", json.dumps(extra)] if extra else [])


def environment(home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "VLM_AGENT_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1"}
    return {**env, "VLM_AGENT_HOME": str(home)} if home else env


def console(*argv: str, home: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `vlm-agent` console script, as a user runs it, with the engine's key in its environment."""
    return subprocess.run(
        [VLM_AGENT, *argv], capture_output=True, text=True, env=environment(home), timeout=timeout, stdin=subprocess.DEVNULL
    )


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def refusal_of(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command ends with (after its "connecting to ..." progress line)."""
    assert proc.returncode == 1 and proc.stdout == "", proc
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1].removeprefix("error: ")


def scripted(text: str, special: tuple[str, ...] = ()) -> dict:
    """vLLM request fields that make the answer ``text`` (structured outputs), its special tokens as tokens."""
    extra: dict = {"structured_outputs": {"choice": [text]}}
    if special:
        extra["logit_bias"] = {str(token_id): 100 for token_id in gemma4_token_ids(special)}
    return extra


def gemma4_ids_writing(wanted: Callable[[str], bool]) -> list[int]:
    """The tiny Gemma 4 vocabulary's ids whose text ``wanted`` picks (decoded alone)."""
    from tools.tiny.gemma4 import gemma4_processor

    processor, _ = gemma4_processor()
    tokenizer = processor.tokenizer
    return [token for token in range(len(tokenizer)) if (text := tokenizer.decode([token])) and wanted(text)]


def gemma4_token_ids(tokens: tuple[str, ...]) -> list[int]:
    from tools.tiny.gemma4 import gemma4_processor

    processor, ids = gemma4_processor()
    return [ids[token] for token in tokens]


def tool_call(name: str, arguments: str) -> dict:
    """Gemma 4 calling ``name`` with ``arguments`` in its own notation, scripted."""
    return scripted(f"<|tool_call>call:{name}{{{arguments}}}<tool_call|>", ("<|tool_call>", "<tool_call|>", '<|"|>'))


def served(server: Vllm, pictures: Path, family: str = "gemma4", **flags) -> AbstractContextManager[RawStdio]:
    """A real `vlm-agent serve` on ``server``, spoken to in raw stdio lines."""
    args = [*engine_flags(server, family, **flags), "--allow-dir", str(pictures), "--out-dir", str(pictures / "out")]
    return raw_stdio(args, env={"VLM_AGENT_API_KEY": API_KEY})


def structured(server: RawStdio, tool: str, arguments: dict) -> dict:
    result = Calls.run(server, tool, arguments)
    assert not result.get("isError"), result
    return result["structuredContent"]


def tool_error(server: RawStdio, tool: str, arguments: dict) -> str:
    result = Calls.run(server, tool, arguments)
    assert result.get("isError"), result
    return check_tool_error(result["content"][0]["text"])


# -- Gemma 4 on the docs' command --------------------------------------------------------------


def test_every_budget_reaches_the_engine_per_request(gemma4, pictures):
    """Through the console script: the engine's prompt grows by exactly the budget's image tokens."""
    small = str(pictures / "small.png")
    counts = {}
    for budget in GEMMA4_TOKENS_64x48:
        result = result_of(console(
            "describe", small, "--budget", str(budget), "--max-new-tokens", "2", "--json", *engine_flags(gemma4)
        ))
        assert (result["runtime"], result["budget"], result["image_tokens"]) == ("engine", budget, None)
        counts[budget] = result["prompt_tokens"]
    text_tokens = {counts[b] - GEMMA4_TOKENS_64x48[b] for b in counts}
    assert len(text_tokens) == 1, counts  # the same prompt around each budget's image

    auto = result_of(console("describe", small, "--budget", "auto", "--max-new-tokens", "2", "--json", *engine_flags(gemma4)))
    assert auto["budget"] in GEMMA4_TOKENS_64x48 and auto["budget_reason"]
    assert auto["prompt_tokens"] == counts[auto["budget"]]


def test_detect_verify_and_consensus_read_the_engines_boxes(gemma4, pictures):
    street, out = str(pictures / "street.png"), str(pictures / "boxes.png")
    flags = [*engine_flags(gemma4, extra=scripted(BOXES)), "--max-new-tokens", "64", "--json", "--out", out]
    plain = result_of(console("detect", street, "cat", *flags))
    assert plain["text"] == BOXES and plain["finish_reason"] == "stop"
    assert [(d["label"], d["box"]) for d in plain["detections"]] == [("cat", GEMMA4_BOX)]
    assert Path(plain["annotated_path"]).is_file()

    verified = result_of(console("detect", street, "cat", "--verify", *flags))
    # the crop question went to the engine at 1120; the scripted answer is boxes, neither yes nor no
    assert any(n.startswith("verify: asked about 1 crops at budget 1120") for n in verified["notes"]), verified
    assert [d["verified"] for d in verified["detections"]] == [None]

    fused = result_of(console("detect", street, "cat", "--consensus", "280,560,1120", *flags))
    assert fused["consensus"] == [280, 560, 1120]
    assert [(d["box"], d["agreement"]["budgets"]) for d in fused["detections"]] == [(GEMMA4_BOX, [280, 560, 1120])]


def test_detect_and_verify_answers_are_held_to_their_schema_by_the_engine(gemma4, pictures):
    """vLLM's structured outputs hold the random model to Gemma 4's box items (whole numbers on the
    0..1000 grid, the asked labels) and the crops' answers to yes or no: every box parses. The same
    model, unconstrained (--no-api-structured), writes gibberish and no box. The logit bias only
    keeps the random model from closing the list at once or padding it with whitespace, which the
    JSON grammar allows."""
    street = str(pictures / "street.png")
    bias = {"logit_bias": {str(token): -100 for token in gemma4_ids_writing(lambda text: text.strip() in ("", "]"))}}
    flags = [*engine_flags(gemma4, extra=bias), "--max-new-tokens", "96", "--json", "--out", str(pictures / "held.png")]
    held = result_of(console("detect", street, "cat", "dog", "--verify", *flags))
    assert held["detections"], held
    assert {d["label"] for d in held["detections"]} <= {"cat", "dog"}
    # only the item the token cap cut off is left out
    dropped = [note for note in held["notes"] if note.startswith("dropped")]
    assert held["text"].startswith('[{"box_2d":[') and dropped in ([], ["dropped truncated output: 1 incomplete item ignored"])
    # each crop answered "yes" or "no": a verdict for every box, none unclear
    assert all(d["verified"] in (True, False) for d in held["detections"]), held["detections"]
    free = result_of(console("detect", street, "cat", "dog", "--no-api-structured", *flags))
    assert free["detections"] == [] and not free["text"].startswith("[{")


def test_a_follow_up_turn_finds_the_conversation_in_the_engines_prefix_cache(gemma4, pictures):
    """What vlm-agent sends turn after turn starts with the earlier turns byte for byte, so the
    engine's own counters show a follow-up turn served from its caches: the whole earlier prompt
    (in whole KV blocks) from the prefix cache, the picture from the multimodal cache."""
    small = str(pictures / "small.png")
    with served(gemma4, pictures) as server:
        before = gemma4.cache_counts()
        first = structured(server, "describe", {"images": [small], "prompt": "What is it?", "budget": 1120, "max_new_tokens": 4})
        between = gemma4.cache_counts()
        history = [{"role": "user", "content": "What is it?", "images": first["image_ids"]}, {"role": "assistant", "content": first["text"]}]
        second = structured(server, "describe", {"images": [], "prompt": "And the colours?", "history": history, "budget": 1120, "max_new_tokens": 4})
        after = gemma4.cache_counts()
    turn1 = {name: between[name] - before[name] for name in before}
    turn2 = {name: after[name] - between[name] for name in before}
    assert turn1["prefix_cache_queries"] == first["prompt_tokens"] and turn2["prefix_cache_queries"] == second["prompt_tokens"]
    block = int(gemma4.metric_label("cache_config_info", "block_size"))
    assert turn2["prefix_cache_hits"] >= first["prompt_tokens"] // block * block > 0, (turn1, turn2)
    assert (turn2["mm_cache_queries"], turn2["mm_cache_hits"]) == (1, 1)


def test_mcp_tools_history_and_the_most_images_a_call_can_carry(gemma4, pictures):
    """A real `vlm-agent serve` on the engine, in raw stdio: describe with history, tiled ocr,
    compare_budgets, and 16 images plus 16 in the history, which the docs' image limit must admit."""
    small, street = str(pictures / "small.png"), str(pictures / "street.png")
    with served(gemma4, pictures) as server:
        alone = structured(server, "describe", {"images": [small], "prompt": "And now?", "budget": 70, "max_new_tokens": 2})
        history = [{"role": "user", "content": "What is it?", "images": [small]}, {"role": "assistant", "content": "A box."}]
        followed = structured(server, "describe", {
            "images": [small], "prompt": "And now?", "budget": 70, "history": history, "max_new_tokens": 2,
        })
        assert followed["history_turns"] == 2
        # the earlier turn's image (63 tokens at 70) and its words reached the engine
        assert followed["prompt_tokens"] - alone["prompt_tokens"] > GEMMA4_TOKENS_64x48[70]

        compared = structured(server, "compare_budgets", {
            "image": small, "task": "describe", "budgets": [70, 280, 1120], "max_new_tokens": 2,
        })
        runs = {run["budget"]: run["prompt_tokens"] for run in compared["runs"]}
        assert len({runs[b] - GEMMA4_TOKENS_64x48[b] for b in runs}) == 1, runs  # all at once, each at its budget

        tiled = structured(server, "ocr", {"image": street, "tiles": 2, "max_new_tokens": 2})
        assert len(tiled["tiles"]) == 4 and tiled["runtime"] == "engine"

        many = [small] * 16
        full = structured(server, "describe", {
            "images": many, "budget": 70, "max_new_tokens": 2,
            "history": [{"role": "user", "content": "These?", "images": many}, {"role": "assistant", "content": "Boxes."}],
        })
        assert full["prompt_tokens"] > 32 * GEMMA4_TOKENS_64x48[70]


def test_the_model_chooses_a_tool_through_the_engines_parser(gemma4, pictures):
    small = str(pictures / "small.png")
    with served(gemma4, pictures, extra=tool_call("detect", 'labels:[<|"|>cat<|"|>]')) as server:
        chose = structured(server, "chat", {"message": "Is there a cat?", "images": [small], "max_new_tokens": 64})
    assert [(c["name"], c["arguments"]) for c in chose["tool_calls"]] == [("detect", {"labels": ["cat"]})]
    assert chose["text"] == "" and chose["runtime"] == "engine"


def test_a_scripted_conversation_runs_with_the_models_tool_choice_and_history(gemma4, pictures, tmp_path):
    """`vlm-agent run`: two turns the model routes (to describe, by a tool call), then a forced ocr."""
    script = tmp_path / "talk.yaml"
    script.write_text(yaml.safe_dump([
        {"user": "What is in this picture?", "images": [str(pictures / "small.png")]},
        {"user": "And what colour is it?"},
        {"user": "Read it.", "tool": "ocr"},
    ]))
    out = tmp_path / "transcript.json"
    proc = console(
        "run", str(script), "--out", str(out), "--max-new-tokens", "48",
        *engine_flags(gemma4, extra=tool_call("describe", 'prompt:<|"|>colours<|"|>')), home=tmp_path / "home",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    turns = json.loads(out.read_text())["turns"]
    assert [(t["tool"], t["routed_by"], t["error"]) for t in turns] == [
        ("describe", "model", None), ("describe", "model", None), ("ocr", "command", None),
    ]
    assert [t["arguments"] for t in turns[:2]] == [{"prompt": "colours"}] * 2
    first, second = (t["result"] for t in turns[:2])
    assert second["history_turns"] == 2 and second["prompt_tokens"] > first["prompt_tokens"]


def test_a_model_the_engine_does_not_serve_is_named_in_one_line(gemma4, pictures):
    wrong = ["--api-model", "google/gemma-4-E4B-it"]
    line = refusal_of(console("describe", str(pictures / "small.png"), *engine_flags(gemma4), *wrong))
    expected = f"serves {gemma4.model}, not 'google/gemma-4-E4B-it'; pass one of those with"
    assert line == f"The engine at {gemma4.url} {expected} --api-model.", line
    args = [*engine_flags(gemma4), *wrong, "--allow-dir", str(pictures)]
    with raw_stdio(args, env={"VLM_AGENT_API_KEY": API_KEY}) as server:  # the server keeps answering, with the reason
        refused = tool_error(server, "describe", {"images": [str(pictures / "small.png")], "max_new_tokens": 2})
    assert expected in refused and refused.endswith("api_model."), refused


def test_a_prompt_too_long_for_the_engine_is_relayed_as_the_engines_words(gemma4, pictures):
    # 16 pictures at 1120 are about 17,000 tokens: past the tiny model's 8,192 positions
    proc = console("describe", *[str(pictures / "small.png")] * 16, "--budget", "1120", *engine_flags(gemma4))
    line = refusal_of(proc)
    assert "says the prompt is too long (HTTP 400, the engine says \"" in line and "lower budget" in line, line


def test_the_benchmark_runs_every_peer_scenario_beside_vllm(gemma4, tiny_gemma4, tmp_path):
    """`python -m bench --peer vllm` on the running engine, at the smallest sizes: every scenario
    gives both sides' times and the same number of tokens on each side."""
    out, table = tmp_path / "peer.json", tmp_path / "peer.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--peer", "vllm", "--peer-url", gemma4.url, "--peer-model", str(tiny_gemma4),
         "--threads", "1", "--repeats", "1", "--tokens", "2", "--budget-tokens", "2", "--turns", "2", "--clients", "2",
         "--calls-per-client", "1", "--out", str(out), "--markdown", str(table)],
        capture_output=True, text=True, env=environment(), timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {row["scenario"] for row in rows} == {
        "cold describe @1120", "follow-up turn @1120", "describe→ocr→detect @280", "compare_budgets ×5, 2 tokens",
        "2-turn conversation @280", "2 clients at once @280",
    }
    assert all(row["ours"] and row["vllm"] for row in rows), rows
    assert all(row["tokens_ours"] == row["tokens_vllm"] for row in rows if row["tokens_ours"] is not None), rows
    follow_up = [row for row in rows if row["scenario"] == "follow-up turn @1120"]
    assert "vLLM's prefix cache served" in follow_up[-1]["note"]
    assert "| cold describe @1120 |" in table.read_text()


# -- Qwen3-VL on the docs' command -----------------------------------------------------------


def test_qwen3_vl_budgets_are_the_engines_pixel_range(qwen3_vl, pictures):
    from tools.families.qwen3_vl import pixel_range, token_grid

    street = str(pictures / "street.png")
    counts, expected = {}, {}
    for budget in (70, 280, 1120):
        result = result_of(console(
            "describe", street, "--budget", str(budget), "--max-new-tokens", "2", "--json",
            *engine_flags(qwen3_vl, "qwen3_vl"),
        ))
        counts[budget] = result["prompt_tokens"]
        columns, rows = token_grid((640, 480), *pixel_range([(640, 480)], budget))
        expected[budget] = columns * rows
    assert len({counts[b] - expected[b] for b in counts}) == 1, (counts, expected)
    assert expected[70] < expected[280] < expected[1120]


def test_qwen3_vl_tools_and_history_through_mcp_and_run(qwen3_vl, pictures, tmp_path):
    small, street = str(pictures / "small.png"), str(pictures / "street.png")
    with served(qwen3_vl, pictures, "qwen3_vl", extra=scripted(QWEN_BOXES)) as server:
        boxes = structured(server, "detect", {"image": street, "labels": ["cat"], "max_new_tokens": 64})
        assert [(d["label"], d["box"]) for d in boxes["detections"]] == [("cat", QWEN_BOX)]
        compared = structured(server, "compare_budgets", {"image": street, "budgets": [70, 280], "max_new_tokens": 2})
        assert compared["runs"][0]["prompt_tokens"] < compared["runs"][1]["prompt_tokens"]
        tiled = structured(server, "ocr", {"image": street, "tiles": 2, "max_new_tokens": 2})
        assert len(tiled["tiles"]) == 4
        refused = tool_error(server, "chat", {"message": "Is there a cat?", "images": [small]})
        assert "pick a tool yourself" in refused

    script = tmp_path / "talk.jsonl"
    script.write_text("\n".join(json.dumps(turn) for turn in [
        {"user": "Describe it.", "images": [street]}, {"user": "And the colours?"}, {"user": "Anything else?"},
    ]))
    out = tmp_path / "transcript.json"
    proc = console(
        "run", str(script), "--out", str(out), "--max-new-tokens", "4", *engine_flags(qwen3_vl, "qwen3_vl"),
        home=tmp_path / "home",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    turns = json.loads(out.read_text())["turns"]
    assert [(t["tool"], t["error"]) for t in turns] == [("describe", None)] * 3
    prompts = [t["result"]["prompt_tokens"] for t in turns]
    assert prompts[0] < prompts[1] < prompts[2], prompts  # each turn carries the ones before it


# -- the bare engine: the docs' command without the budget and tool flags ----------------------


def test_an_engine_without_the_budget_flag_refuses_budgets_in_one_line_of_ours(bare, pictures):
    line = refusal_of(console("describe", str(pictures / "small.png"), "--budget", "560", *engine_flags(bare)))
    assert line == (
        f"The engine at {bare.url} does not take per-request budgets (HTTP 400); vLLM takes them only when started "
        "with its trust-request-mm-kwargs option: restart the engine with it, or vlm-agent without --budgets-supported."
    )
    # Undeclared, the same engine serves the call at its own default budget.
    plain = result_of(console("describe", str(pictures / "small.png"), "--json", "--max-new-tokens", "2",
                              *engine_flags(bare, budgets=False)))
    assert plain["budget"] is None and plain["prompt_tokens"] > GEMMA4_TOKENS_64x48[280]


def test_an_engine_without_the_tool_flags_refuses_chat_and_run_routes_by_keywords(bare, pictures, tmp_path):
    with served(bare, pictures, budgets=False) as server:
        refused = tool_error(server, "chat", {"message": "Is there a cat?", "images": [str(pictures / "small.png")]})
    assert "does not let the model choose tools (HTTP 400)" in refused and "--" not in refused, refused

    script = tmp_path / "talk.yaml"
    script.write_text(yaml.safe_dump([{"user": "Describe this picture.", "images": [str(pictures / "small.png")]}]))
    proc = console("run", str(script), "--max-new-tokens", "2", *engine_flags(bare, budgets=False), home=tmp_path / "h")
    transcript = json.loads(proc.stdout)
    assert proc.returncode == 0 and [(t["tool"], t["routed_by"]) for t in transcript["turns"]] == [("describe", "router")]
    assert "could not choose a tool" in proc.stderr and "routing by keywords" in proc.stderr, proc.stderr


#: tokens of the answer the engine dies in: within the tiny checkpoints' 8192 positions, with the prompt;
#: about 20 s of generating on 2 cores
LONG_ANSWER = 7000
#: seconds from sending that call to killing the engine, when no text has come through by then
AT_WORK_S = 4.0


def test_an_engine_gone_mid_call_then_down_then_restarted(bare, pictures):
    """One `vlm-agent serve` throughout: the call the engine dies in, the calls while it is down and
    the first one after it is back each get their answer; the server never needs a restart."""
    small = str(pictures / "small.png")
    # ignore_eos: the random model would stop early, and the answer keeps the engine writing for ~20 s here.
    with served(bare, pictures, budgets=False, extra={"ignore_eos": True}) as server:
        structured(server, "describe", {"images": [small], "max_new_tokens": 2})  # loaded: the next call goes out at once
        message = json.loads(call("long", "describe", {"images": [small], "max_new_tokens": LONG_ANSWER}))
        message["params"]["_meta"] = {"progressToken": "p1"}
        server.send(json.dumps(message).encode())
        # The engine is at work once a piece of text has come through, or some seconds after the call went out.
        # The text alone can come too late, and the engine's metrics too: on 2 CPU cores vLLM's API process
        # answers in bursts while its engine generates (most of a 3000-token answer came at its end).
        sent = time.monotonic()
        while time.monotonic() - sent < AT_WORK_S:
            seen = server.poll(0.2) or {}
            assert seen.get("id") != "long", ("answered before the kill", seen, bare.tail())
            # generated text: progress counts tokens out of max_new_tokens (the load's own line has no total)
            if seen.get("method") == "notifications/progress" and seen["params"].get("total") == LONG_ANSWER:
                break
        bare.stop(9)  # SIGKILL: as a crash or an OOM kill would
        answer = server.answer("long", timeout=120)
        gone = check_tool_error(answer["result"]["content"][0]["text"])
        assert answer["result"]["isError"] and "broke off" in gone, gone

        down = tool_error(server, "describe", {"images": [small], "max_new_tokens": 2})
        assert f"Cannot reach the engine at {bare.url}" in down, down

        bare.launch().wait_ready()  # the same port, as a supervisor would restart it
        back = structured(server, "describe", {"images": [small], "max_new_tokens": 2})
        assert back["runtime"] == "engine" and back["generated_tokens"] == 2

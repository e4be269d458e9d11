"""The BLIP-2 backend on tiny random-weight checkpoints (OPT and Flan-T5): prompts, chat trimming, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import boxes, record_prompts, run, sample_image, sample_input
from tools.families import blip2
from tools.errors import InvalidRequest, Unsupported
from tools.families.blip2 import Blip2
from tools.model import Model, load_model
from tools.options import GenerationOptions
from tools.tasks import Turn

SHORT = GenerationOptions(max_new_tokens=4)


@pytest.fixture(scope="module")
def blip2_t5_backend(tmp_path_factory: pytest.TempPathFactory) -> Model:
    from tools.tiny import build_tiny

    model = load_model(str(build_tiny(tmp_path_factory.mktemp("ckpt") / "blip2-t5", "blip2-t5")))
    assert isinstance(model.dialect, Blip2)
    return model


def count_tokens(model: Model, text: str) -> int:
    """Tokens the language model sees for ``text``: the query tokens, then the text as the processor encodes it."""
    return model.capabilities.image_tokens + model.runtime.token_counter()(text)


def test_loads_as_blip2(blip2_backend, tiny_blip2: Path):
    assert isinstance(blip2_backend.dialect, Blip2)
    assert (blip2_backend.family, blip2_backend.model_id, blip2_backend.capabilities.image_tokens) == ("blip2", str(tiny_blip2), 32)
    assert not blip2_backend.runtime.is_encoder_decoder
    caps = blip2_backend.capabilities
    assert (caps.context_policy, caps.context_tokens, caps.max_images) == ("concat", 512, 1)


@pytest.mark.parametrize(
    ("prompt", "sent"),
    [
        ("", ""),
        ("this is a cartoon of", "this is a cartoon of"),
        ("What is a dinosaur holding?", "Question: What is a dinosaur holding? Answer:"),
    ],
)
def test_caption_continuation_and_question(blip2_backend, monkeypatch, prompt, sent):
    texts = record_prompts(monkeypatch, blip2_backend)
    generation = run(blip2_backend, "describe", [sample_image()], prompt, options=SHORT).generation
    assert texts == [sent]
    assert (generation.image_tokens, generation.budget, generation.history_turns) == (32, None, 0)
    assert generation.prompt_tokens == count_tokens(blip2_backend, sent)


def test_unprompted_caption_is_the_query_tokens_and_bos_only(blip2_backend):
    assert run(blip2_backend, "describe", [sample_image()], "", options=SHORT).generation.prompt_tokens == 32 + 1


def test_prior_turns_are_concatenated_as_question_answer_pairs(blip2_backend, monkeypatch):
    texts = record_prompts(monkeypatch, blip2_backend)
    history = [
        Turn("user", "What is a dinosaur holding?", (sample_input(),)),
        Turn("assistant", "a torch"),
        Turn("user", "Where are they?"),
        Turn("assistant", "In the woods."),
    ]
    generation = run(blip2_backend, "describe", [], "What for?", history=history, options=SHORT).generation
    assert texts == [
        "Question: What is a dinosaur holding? Answer: a torch. Question: Where are they? Answer: In the woods. "
        "Question: What for? Answer:"
    ]
    assert generation.history_turns == 4
    assert not any("dropped" in note for note in generation.notes)
    assert any("latest image" in note for note in generation.notes)  # the first turn's image was used


def long_history(pairs: int) -> list[Turn]:
    turns = []
    for n in range(pairs):
        turns += [Turn("user", f"What is thing number {n} in the picture?"), Turn("assistant", f"it is thing {n}")]
    return turns


def test_context_is_trimmed_to_512_tokens_keeping_the_newest_pairs(blip2_backend, monkeypatch):
    texts = record_prompts(monkeypatch, blip2_backend)
    history = long_history(20)  # about 60 tokens a pair with the tiny byte-level tokenizer
    generation = run(blip2_backend, "describe", [sample_image()], "And the last one?", history=history, options=SHORT).generation
    sent = texts[0]
    kept = generation.history_turns // 2
    dropped = 20 - kept
    assert 0 < kept < 20
    assert generation.prompt_tokens == count_tokens(blip2_backend, sent) <= 512
    # the newest pairs, in order, then this turn; one pair more would not have fit
    pairs = [pair for pair, _ in blip2.pairs_of([(t.role, t.text) for t in history])]
    assert sent == " ".join([*pairs[dropped:], "Question: And the last one? Answer:"])
    assert count_tokens(blip2_backend, pairs[dropped - 1] + " " + sent) > 512
    assert any(f"dropped the {dropped} oldest question/answer pairs" in note and "512" in note for note in generation.notes)


def test_history_that_fits_is_not_trimmed(blip2_backend):
    generation = run(blip2_backend, "describe", [sample_image()], "Why?", history=long_history(3), options=SHORT).generation
    assert generation.history_turns == 6
    assert generation.prompt_tokens <= 512


def test_a_question_too_long_alone_is_refused_not_cut(blip2_backend):
    with pytest.raises(InvalidRequest, match="BLIP-2"):
        run(blip2_backend, "describe", [sample_image()], "Why " * 400 + "?", history=long_history(2), options=SHORT).generation


def test_several_images_are_refused(blip2_backend):
    with pytest.raises(Unsupported, match=r"BLIP-2 takes 1 image per prompt and 2 were given"):
        run(blip2_backend, "describe", [sample_image(), sample_image()], "Compare.", options=SHORT).generation


def test_no_image_at_all_is_refused(blip2_backend):
    with pytest.raises(InvalidRequest, match="BLIP-2 needs an image"):
        run(blip2_backend, "describe", [], "Why?", history=[Turn("user", "hi"), Turn("assistant", "hello")], options=SHORT).generation


def test_ocr_asks_a_reading_question_and_says_so(blip2_backend, monkeypatch):
    texts = record_prompts(monkeypatch, blip2_backend)
    generation = run(blip2_backend, "ocr", [sample_image()], options=SHORT).generation
    assert texts == [blip2.OCR]
    assert any("no reading task" in note for note in generation.notes)


def test_detect_and_segment_are_unsupported_naming_the_family(blip2_backend):
    with pytest.raises(Unsupported, match="BLIP-2 models cannot detect"):
        boxes(run(blip2_backend, "detect", [sample_image()], labels=["cat"], options=SHORT))
    with pytest.raises(Unsupported, match="BLIP-2 models cannot segment"):
        boxes(run(blip2_backend, "segment", [sample_image()], labels=["cat"], options=SHORT))


@pytest.mark.parametrize(("budget", "ok"), [(None, True), (32, True), (280, False), (256, False)])
def test_fixed_resolution_budget(blip2_backend, budget, ok):
    if ok:
        assert run(blip2_backend, "ocr", [sample_image()], budget=budget, options=SHORT).generation.budget is None
    else:
        with pytest.raises(InvalidRequest, match=r"BLIP-2 has a fixed resolution \(32 image tokens"):
            run(blip2_backend, "ocr", [sample_image()], budget=budget, options=SHORT).generation


def test_flan_t5_variant_counts_decoder_tokens_only(blip2_t5_backend, monkeypatch):
    assert blip2_t5_backend.runtime.is_encoder_decoder
    texts = record_prompts(monkeypatch, blip2_t5_backend)
    options = GenerationOptions(max_new_tokens=5, min_new_tokens=5)
    generation = run(blip2_t5_backend, "describe", [sample_image()], "What is red?", history=long_history(1), options=options).generation
    assert texts == ["Question: What is thing number 0 in the picture? Answer: it is thing 0. Question: What is red? Answer:"]
    assert (generation.generated_tokens, generation.finish_reason, generation.history_turns) == (5, "length", 2)
    assert generation.prompt_tokens == count_tokens(blip2_t5_backend, texts[0])
    assert run(blip2_t5_backend, "ocr", [sample_image()], options=SHORT).generation.image_tokens == 32


def test_a_30_turn_conversation_through_the_real_cli_answers_every_turn(tiny_blip2: Path, tmp_path: Path):
    """The client sends every earlier turn as it is; the server folds them under 512 tokens, dropping the
    oldest pairs and saying so, so no turn fails on length however long the conversation grows."""
    import json
    import os
    import subprocess
    import sys

    sample_image(64, 48).save(tmp_path / "photo.png")
    turns = [{"user": "What is thing number 0 in the picture?", "images": ["photo.png"]}]
    turns += [{"user": f"And what is thing number {n} in the picture, next to the others?"} for n in range(1, 30)]
    script = tmp_path / "talk.jsonl"
    script.write_text("".join(json.dumps(turn) + "\n" for turn in turns))
    out = tmp_path / "transcript.json"
    vlm_agent = Path(sys.executable).parent / "vlm-agent"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLM_AGENT_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [str(vlm_agent), "run", str(script), "--model", str(tiny_blip2), "--max-new-tokens", "20", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "30 turns ok, 0 failed" in proc.stderr
    transcript = json.loads(out.read_text())
    assert (transcript["failed"], transcript["family"], transcript["context"]) == (0, "blip2", "concat")
    results = [turn["result"] for turn in transcript["turns"]]
    assert len(results) == 30 and all(turn["error"] is None for turn in transcript["turns"])
    assert all(result["prompt_tokens"] <= 512 for result in results)
    # the server kept what fits and said what it dropped, as the conversation outgrew the context
    dropping = [result for result in results if any("oldest question/answer pair" in n for n in result["notes"])]
    assert dropping and all(result["history_turns"] > 0 for result in results[1:])


def test_flan_t5_cannot_extract_and_says_why_in_one_line(blip2_t5_backend):
    """llguidance cannot read T5's tokenizer (its Metaspace decoder): refused in one line, naming what works."""
    from tools.extract import prepare
    from tools.tasks import Ask

    schema = prepare({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}})
    ask = Ask("extract", (sample_input(),), schema.text(), schema.names, schema=schema)
    with pytest.raises(Unsupported) as caught:
        blip2_t5_backend.run(ask, GenerationOptions(max_new_tokens=8))
    assert str(caught.value) == (
        "This model's tokenizer (T5Tokenizer) is one the schema-constrained decoder cannot read, so this model cannot "
        "extract; use a Gemma 4, Qwen3-VL, PaliGemma or BLIP-2 (OPT) model."
    )

"""The BLIP-2 backend on tiny random-weight checkpoints (OPT and Flan-T5): prompts, chat trimming, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import record_prompts, sample_image
from tools import prompts
from tools.backends import load_backend
from tools.backends.base import Turn
from tools.backends.blip2 import Blip2Backend
from tools.errors import InvalidRequest, Unsupported
from tools.options import GenerationOptions

SHORT = GenerationOptions(max_new_tokens=4)


@pytest.fixture(scope="module")
def blip2_t5_backend(tmp_path_factory: pytest.TempPathFactory) -> Blip2Backend:
    from tools.tiny import build_tiny

    backend = load_backend(str(build_tiny(tmp_path_factory.mktemp("ckpt") / "blip2-t5", "blip2-t5")))
    assert isinstance(backend, Blip2Backend)
    return backend


def test_loads_as_blip2(blip2_backend, tiny_blip2: Path):
    assert isinstance(blip2_backend, Blip2Backend)
    assert (blip2_backend.family, blip2_backend.model_id, blip2_backend.fixed_image_tokens) == ("blip2", str(tiny_blip2), 32)
    assert not blip2_backend.is_encoder_decoder


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
    generation = blip2_backend.describe([sample_image()], prompt, (), None, SHORT)
    assert texts == [sent]
    assert (generation.image_tokens, generation.budget, generation.history_turns) == (32, None, 0)
    assert generation.prompt_tokens == blip2_backend.count_tokens(sent)


def test_unprompted_caption_is_the_query_tokens_and_bos_only(blip2_backend):
    assert blip2_backend.describe([sample_image()], "", (), None, SHORT).prompt_tokens == 32 + 1


def test_prior_turns_are_concatenated_as_question_answer_pairs(blip2_backend, monkeypatch):
    texts = record_prompts(monkeypatch, blip2_backend)
    history = [
        Turn("user", "What is a dinosaur holding?", (sample_image(),)),
        Turn("assistant", "a torch"),
        Turn("user", "Where are they?"),
        Turn("assistant", "In the woods."),
    ]
    generation = blip2_backend.describe([], "What for?", history, None, SHORT)
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
    generation = blip2_backend.describe([sample_image()], "And the last one?", history, None, SHORT)
    sent = texts[0]
    kept = generation.history_turns // 2
    dropped = 20 - kept
    assert 0 < kept < 20
    assert generation.prompt_tokens == blip2_backend.count_tokens(sent) <= 512
    # the newest pairs, in order, then this turn; one pair more would not have fit
    pairs = [pair for pair, _ in prompts.blip2_pairs([(t.role, t.text) for t in history])]
    assert sent == " ".join([*pairs[dropped:], "Question: And the last one? Answer:"])
    assert blip2_backend.count_tokens(pairs[dropped - 1] + " " + sent) > 512
    assert any(f"dropped the {dropped} oldest question/answer pairs" in note and "512" in note for note in generation.notes)


def test_history_that_fits_is_not_trimmed(blip2_backend):
    generation = blip2_backend.describe([sample_image()], "Why?", long_history(3), None, SHORT)
    assert generation.history_turns == 6
    assert generation.prompt_tokens <= 512


def test_a_question_too_long_alone_is_refused_not_cut(blip2_backend):
    with pytest.raises(InvalidRequest, match="BLIP-2"):
        blip2_backend.describe([sample_image()], "Why " * 400 + "?", long_history(2), None, SHORT)


def test_several_images_are_refused(blip2_backend):
    with pytest.raises(Unsupported, match=r"BLIP-2 takes 1 image per prompt and 2 were given"):
        blip2_backend.describe([sample_image(), sample_image()], "Compare.", (), None, SHORT)


def test_no_image_at_all_is_refused(blip2_backend):
    with pytest.raises(InvalidRequest, match="BLIP-2 needs an image"):
        blip2_backend.describe([], "Why?", [Turn("user", "hi"), Turn("assistant", "hello")], None, SHORT)


def test_ocr_asks_a_reading_question_and_says_so(blip2_backend, monkeypatch):
    texts = record_prompts(monkeypatch, blip2_backend)
    generation = blip2_backend.ocr(sample_image(), None, SHORT)
    assert texts == [prompts.BLIP2_OCR]
    assert any("no reading task" in note for note in generation.notes)


def test_detect_and_segment_are_unsupported_naming_the_family(blip2_backend):
    with pytest.raises(Unsupported, match="BLIP-2 models cannot detect"):
        blip2_backend.detect(sample_image(), ["cat"], None, SHORT)
    with pytest.raises(Unsupported, match="BLIP-2 models cannot segment"):
        blip2_backend.segment(sample_image(), "cat", None, SHORT)


@pytest.mark.parametrize(("budget", "ok"), [(None, True), (32, True), (280, False), (256, False)])
def test_fixed_resolution_budget(blip2_backend, budget, ok):
    if ok:
        assert blip2_backend.ocr(sample_image(), budget, SHORT).budget is None
    else:
        with pytest.raises(InvalidRequest, match=r"BLIP-2 has a fixed resolution \(32 image tokens"):
            blip2_backend.ocr(sample_image(), budget, SHORT)


def test_flan_t5_variant_counts_decoder_tokens_only(blip2_t5_backend, monkeypatch):
    assert blip2_t5_backend.is_encoder_decoder
    texts = record_prompts(monkeypatch, blip2_t5_backend)
    options = GenerationOptions(max_new_tokens=5, min_new_tokens=5)
    generation = blip2_t5_backend.describe([sample_image()], "What is red?", long_history(1), None, options)
    assert texts == ["Question: What is thing number 0 in the picture? Answer: it is thing 0. Question: What is red? Answer:"]
    assert (generation.generated_tokens, generation.finish_reason, generation.history_turns) == (5, "length", 2)
    assert generation.prompt_tokens == blip2_t5_backend.count_tokens(texts[0])
    assert blip2_t5_backend.ocr(sample_image(), None, SHORT).image_tokens == 32

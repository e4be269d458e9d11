"""The Gemma 4 backend on a tiny random-weight checkpoint: plumbing, never wording."""

from __future__ import annotations

import pytest

from tests.conftest import boxes, run, sample_image, sample_input
from tools.model import load_model
from tools.runtimes.local import local_messages
from tools.tasks import Ask, Turn
from tools.families.gemma4 import BUDGETS as GEMMA4_BUDGETS
from tools.families.gemma4 import square_image_tokens
from tools.errors import InvalidRequest, ModelNotFound, Unsupported
from tools.options import GenerationOptions

SHORT = GenerationOptions(max_new_tokens=4)


@pytest.mark.parametrize(
    ("budget", "tokens"), [(70, 64), (140, 121), (280, 256), (560, 529), (1120, 1089)]
)
def test_budget_gives_documented_image_tokens_on_square_image(gemma4_backend, budget, tokens):
    generation = run(gemma4_backend, "describe", [sample_image(512, 512)], "Describe.", budget=budget, options=SHORT).generation
    assert generation.image_tokens == tokens == square_image_tokens(budget)
    assert generation.budget == budget


@pytest.mark.parametrize(("budget", "tokens"), list(zip(GEMMA4_BUDGETS, (63, 130, 266, 540, 1064))))
def test_small_non_square_image_is_upscaled_to_budget(gemma4_backend, budget, tokens):
    generation = run(gemma4_backend, "describe", [sample_image(64, 48)], "x", budget=budget, options=SHORT).generation
    assert generation.image_tokens == tokens


def test_default_budget_is_280(gemma4_backend):
    generation = run(gemma4_backend, "describe", [sample_image(512, 512)], "x", options=SHORT).generation
    assert (generation.budget, generation.image_tokens) == (280, 256)


@pytest.mark.parametrize("budget", [0, 69, 100, 281, 2240, -70])
def test_budget_outside_the_set_is_refused(gemma4_backend, budget):
    with pytest.raises(InvalidRequest, match="use one of 70 / 140 / 280 / 560 / 1120"):
        run(gemma4_backend, "describe", [sample_image()], "x", budget=budget, options=SHORT).generation


def test_several_images_each_get_their_tokens(gemma4_backend):
    images = [sample_image(512, 512)] * 3
    generation = run(gemma4_backend, "describe", images, "Compare.", budget=70, options=SHORT).generation
    assert generation.image_tokens == 3 * 64


def rendered(backend, messages) -> str:
    return backend.runtime.processor.apply_chat_template(
        local_messages(messages), add_generation_prompt=True, tokenize=False
    )


def test_multi_turn_prompt_keeps_turns_in_order_with_their_images(gemma4_backend):
    history = [
        Turn("user", "What is this?", (sample_input(), sample_input())),
        Turn("assistant", "Two red boxes."),
        Turn("user", "And this one?", (sample_input(),)),
        Turn("assistant", "A third box."),
    ]
    messages = gemma4_backend.dialect.prompt(Ask("describe", (sample_input(),), "Which is largest?", history=tuple(history))).messages
    text = rendered(gemma4_backend, messages)
    assert text.count("<|turn>user\n") == 3
    assert text.count("<|turn>model\n") == 3  # two answers plus the generation prompt
    assert text.count("<|image|>") == 4
    order = [text.index(s) for s in ("What is this?", "Two red boxes.", "And this one?", "A third box.", "Which is largest?")]
    assert order == sorted(order)
    assert text.endswith("<|turn>model\n")

    generation = run(gemma4_backend, "describe", [sample_image(512, 512)], "Which?", history=history, budget=70, options=SHORT).generation
    assert generation.history_turns == 4
    # 3 history images at 64x48 (63 tokens at budget 70) plus one square image (64)
    assert generation.image_tokens == 3 * 63 + 64


def test_counts_and_timings_are_reported(gemma4_backend):
    options = GenerationOptions(max_new_tokens=6, min_new_tokens=6)
    generation = run(gemma4_backend, "describe", [sample_image()], "x", budget=70, options=options).generation
    assert generation.generated_tokens == 6
    assert generation.finish_reason == "length"
    assert any("max_new_tokens=6" in note for note in generation.notes)
    assert generation.prompt_tokens > generation.image_tokens > 0
    t = generation.timings
    assert t.preprocess_ms > 0 and t.generate_ms > 0 and t.total_ms >= t.preprocess_ms + t.generate_ms


def test_sampling_options_run(gemma4_backend):
    options = GenerationOptions(max_new_tokens=3, temperature=0.7, top_p=0.9)
    assert run(gemma4_backend, "describe", [sample_image()], "x", budget=70, options=options).generation.generated_tokens <= 3


def test_ocr_and_detect_run_with_their_prompts(gemma4_backend):
    image = sample_image(640, 480)
    assert run(gemma4_backend, "ocr", [image], budget=70, options=SHORT).generation.image_tokens > 0
    generation, parsed = boxes(run(gemma4_backend, "detect", [image], labels=["cat", "dog"], budget=70, options=SHORT))
    assert parsed.image_size == (640, 480)
    assert generation.generated_tokens <= 4


def test_prompt_longer_than_the_context_is_refused(gemma4_backend):
    with pytest.raises(InvalidRequest, match="past this model's"):
        run(gemma4_backend, "describe", [sample_image()] * 8, "x", budget=1120, options=GenerationOptions(max_new_tokens=8000)).generation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -5}, "max_new_tokens"),
        ({"max_new_tokens": 10**6}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": 9.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 4, "min_new_tokens": 5}, "min_new_tokens"),
    ],
)
def test_bad_generation_options_are_refused(kwargs, message):
    with pytest.raises(InvalidRequest, match=message):
        GenerationOptions(**kwargs)


def test_greedy_by_default_clears_checkpoint_sampling_defaults():
    assert GenerationOptions().generate_kwargs() == {
        "max_new_tokens": 512, "do_sample": False, "temperature": None, "top_p": None, "top_k": None
    }
    assert GenerationOptions(temperature=0.5, top_p=0.9).generate_kwargs() == {
        "max_new_tokens": 512, "do_sample": True, "temperature": 0.5, "top_p": 0.9
    }


def test_missing_local_directory_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound, match="No model directory"):
        load_model(str(tmp_path / "nope"))


def test_unreachable_hub_id_says_how_to_use_a_local_copy():
    with pytest.raises(ModelNotFound) as info:
        load_model("google/gemma-4-E2B-it")
    # The core names the parameter; the CLI words it as its flag, the MCP server as its argument.
    from agent.cli import cli_words

    assert info.value.param == "model"
    message = cli_words(info.value)
    assert "--model" in message and "VLM_AGENT_MODEL" in message and "\n" not in message
    assert "--" not in str(info.value).replace("--local-dir", "")


def test_directory_without_a_model_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        load_model(str(tmp_path))


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(Unsupported, match="'bert' is not supported"):
        load_model(str(tmp_path))


def test_model_loads_once_through_from_pretrained(gemma4_backend, tiny_gemma4):
    assert gemma4_backend.family == "gemma4"
    assert gemma4_backend.model_id == str(tiny_gemma4)
    assert gemma4_backend.device == "cpu"


@pytest.mark.parametrize("size", [(1, 20000), (20000, 1), (1, 1)])
def test_extreme_shapes_run_at_every_budget(gemma4_backend, size):
    from PIL import Image

    for budget in (70, 1120):
        generation = run(gemma4_backend, "describe", [Image.new("RGB", size, "white")], "x", budget=budget, options=SHORT).generation
        assert 0 < generation.image_tokens <= budget


@pytest.mark.parametrize(("budget", "side"), [(70, 384), (280, 768), (1120, 1584)])
def test_seen_size_matches_the_processor(gemma4_backend, budget, side):
    assert gemma4_backend.seen_size((512, 512), budget) == (side, side)


def test_streaming_hands_out_the_answer_as_it_is_generated(gemma4_backend):
    from tools.runtimes.streaming import streaming

    pieces: list[tuple[str, int]] = []
    options = GenerationOptions(max_new_tokens=12, min_new_tokens=12)
    with streaming(lambda delta, tokens: pieces.append((delta, tokens))):
        generation = run(gemma4_backend, "describe", [sample_image()], "Describe.", budget=70, options=options).generation
    assert pieces and "".join(d for d, _ in pieces) == generation.text
    counts = [tokens for _, tokens in pieces]
    assert counts == sorted(counts) and counts[-1] <= generation.generated_tokens

"""The PaliGemma backend on a tiny random-weight checkpoint: prefixes, single turn, fixed resolution, <loc> boxes."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import boxes, model_says, record_prompts, run, sample_image, sample_input
from tools.families.paligemma import PaliGemma
from tools.model import load_model
from tools.tasks import Turn
from tools.families.paligemma import from_loc_tokens
from tools.errors import InvalidRequest
from tools.inputs import AccessPolicy, ImageLoader
from tools.options import GenerationOptions, resolve_options
from tools.vision import Vision

SHORT = GenerationOptions(max_new_tokens=4)


def test_family_comes_from_the_config_not_the_name(tiny_paligemma, tmp_path):
    misleading = tmp_path / "blip2-gemma4"
    shutil.copytree(tiny_paligemma, misleading)
    backend = load_model(str(misleading))
    assert isinstance(backend.dialect, PaliGemma)
    assert (backend.family, backend.capabilities.budgets, backend.capabilities.image_tokens) == ("paligemma", (), 256)
    assert backend.capabilities.context_policy == "single-turn"


@pytest.mark.parametrize(
    ("prompt", "lang", "sent"),
    [
        ("", "en", "<image>caption en"),
        ("", "es", "<image>caption es"),
        ("Describe this image.", "en", "<image>caption en"),
        ("What is red?", "en", "<image>answer en What is red?"),
        ("What is red?", "de", "<image>answer de What is red?"),
        ("caption fr", "en", "<image>caption fr"),
        ("detect cat", "en", "<image>detect cat"),
    ],
)
def test_describe_sends_the_task_prefix(paligemma_backend, monkeypatch, prompt, lang, sent):
    texts = record_prompts(monkeypatch, paligemma_backend)
    monkeypatch.setattr(paligemma_backend.dialect, "lang", lang)
    generation = run(paligemma_backend, "describe", [sample_image()], prompt, options=SHORT).generation
    assert texts == [sent]
    assert (generation.image_tokens, generation.budget, generation.history_turns) == (256, None, 0)
    # <image> x 256, <bos>, the prefix, "\n": nothing else reaches the model
    assert generation.prompt_tokens == 256 + 1 + len(paligemma_backend.runtime.processor.tokenizer(sent[7:] + "\n")["input_ids"])


def test_prior_turns_are_not_sent_and_the_result_says_so(paligemma_backend, monkeypatch):
    texts = record_prompts(monkeypatch, paligemma_backend)
    history = [Turn("user", "What is this?"), Turn("assistant", "A box."), Turn("user", "And this?")]
    generation = run(paligemma_backend, "describe", [sample_image()], "Why?", history=history, options=SHORT).generation
    assert texts == ["<image>answer en Why?"]
    assert generation.history_turns == 0
    assert any("single-turn" in note and "3 prior turns" in note for note in generation.notes)


def test_without_an_image_the_latest_history_image_is_used(paligemma_backend):
    history = [Turn("user", "What is this?", (sample_input(),)), Turn("assistant", "A box.")]
    generation = run(paligemma_backend, "describe", [], "Why?", history=history, options=SHORT).generation
    assert generation.image_tokens == 256
    assert any("latest image" in note for note in generation.notes)


def test_several_images_each_get_their_tokens(paligemma_backend, monkeypatch):
    texts = record_prompts(monkeypatch, paligemma_backend)
    generation = run(paligemma_backend, "describe", [sample_image()] * 2, "", options=SHORT).generation
    assert texts == ["<image><image>caption en"]
    assert generation.image_tokens == 512


@pytest.mark.parametrize("budget", [None, 256])
def test_no_budget_or_the_checkpoints_own_count_is_accepted(paligemma_backend, budget):
    assert run(paligemma_backend, "ocr", [sample_image()], budget=budget, options=SHORT).generation.budget is None


@pytest.mark.parametrize("budget", [70, 280, 1024, 0])
def test_any_other_budget_is_refused_naming_the_family(paligemma_backend, budget):
    with pytest.raises(InvalidRequest, match=r"PaliGemma has a fixed resolution \(256 image tokens"):
        run(paligemma_backend, "describe", [sample_image()], "x", budget=budget, options=SHORT).generation


def test_ocr_and_detect_prefixes(paligemma_backend, monkeypatch):
    texts = record_prompts(monkeypatch, paligemma_backend)
    run(paligemma_backend, "ocr", [sample_image()], options=SHORT).generation
    boxes(run(paligemma_backend, "detect", [sample_image()], labels=["cat", "traffic light"], options=SHORT))
    boxes(run(paligemma_backend, "segment", [sample_image()], labels=["cat"], options=SHORT))
    assert texts == ["<image>ocr", "<image>detect cat ; traffic light", "<image>segment cat"]


def vision(backend, tmp_path):
    path = tmp_path / "street.png"
    sample_image(640, 480).save(path)
    return Vision(backend, ImageLoader(AccessPolicy.for_files([path]))), str(path)


def test_detect_turns_loc_tokens_into_pixel_boxes(paligemma_backend, monkeypatch, tmp_path):
    model_says(
        monkeypatch, paligemma_backend,
        "<loc0256><loc0128><loc0768><loc0896> car ; <loc0100><loc0200> person ; <loc0000><loc0000><loc1023><loc1023>",
    )
    v, image = vision(paligemma_backend, tmp_path)
    result = v.detect(image, ["car", "person"], annotated_path=tmp_path / "boxes.png")
    assert [(d.label, d.box) for d in result.detections] == [("car", (80, 120, 560, 360)), ("object", (0, 0, 639, 480))]
    assert result.detections[0].box_normalized == (0.125, 0.25, 0.875, 0.75)
    assert result.detections[0].raw == "<loc0256><loc0128><loc0768><loc0896> car"
    assert any(note.startswith("dropped item 2:") for note in result.notes)
    assert result.budget is None and result.family == "paligemma"


def test_segment_returns_the_box_with_its_codes_and_says_there_is_no_mask(paligemma_backend, monkeypatch, tmp_path):
    codes = [7, 99, 0, 127, 5, 5, 64, 3, 12, 88, 101, 42, 9, 77, 1, 30]
    model_says(
        monkeypatch, paligemma_backend,
        "<loc0256><loc0128><loc0768><loc0896>" + "".join(f"<seg{c:03d}>" for c in codes) + " cat",
    )
    v, image = vision(paligemma_backend, tmp_path)
    result = v.segment(image, "cat")
    assert result.task == "segment"
    assert [(d.label, d.box, d.seg_codes) for d in result.detections] == [("cat", (80, 120, 560, 360), tuple(codes))]
    assert any("VQ-VAE" in note for note in result.notes)


# Outputs in the shape PaliGemma mix checkpoints give for "detect car ; person ; traffic light".
REAL_LOOKING = [
    (
        "<loc0512><loc0100><loc0900><loc0400> car ; <loc0300><loc0600><loc0950><loc0700> person ; "
        "<loc0050><loc0800><loc0200><loc0850> traffic light",
        [("car", (100, 512, 400, 900)), ("person", (600, 300, 700, 950)), ("traffic light", (800, 50, 850, 200))],
        0,
    ),
    # cut at max_new_tokens in the middle of the second group
    ("<loc0512><loc0100><loc0900><loc0400> car ; <loc0300><loc0600>", [("car", (100, 512, 400, 900))], 1),
    # a group with no label, and a label with no box
    (
        "<loc0512><loc0100><loc0900><loc0400> ; person ; <loc0300><loc0600><loc0950><loc0700> person",
        [("object", (100, 512, 400, 900)), ("person", (600, 300, 700, 950))],
        0,
    ),
    # the same car twice, and a five-token group
    (
        "<loc0512><loc0100><loc0900><loc0400> car ; <loc0512><loc0100><loc0900><loc0400> car ; "
        "<loc0001><loc0002><loc0003><loc0004><loc0005> car",
        [("car", (100, 512, 400, 900))],
        2,
    ),
]


@pytest.mark.parametrize(("text", "expected", "dropped"), REAL_LOOKING)
def test_loc_parsing_on_real_looking_outputs(text, expected, dropped):
    parsed = from_loc_tokens(text, (1024, 1024))
    assert [(d.label, d.box) for d in parsed.detections] == expected
    assert len(parsed.dropped) == dropped


@pytest.mark.parametrize("preset", ["greedy", "nucleus-0.1", "nucleus-0.3", "temperature-0.5"])
def test_decoding_presets_run(paligemma_backend, preset):
    options = resolve_options(preset, max_new_tokens=3)
    assert run(paligemma_backend, "describe", [sample_image()], "", options=options).generation.generated_tokens <= 3

"""The same tool calls against every family's tiny checkpoint: one result shape, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch

from agent.cli import main
from tests.conftest import run as run_task, sample_image
from tools.model import load_model
from tools.runtimes.loading import quantization_config
from tools.errors import InvalidRequest, Unsupported
from tools.inputs import AccessPolicy, ImageLoader
from tools.options import GenerationOptions
from tools.results import DescribeResult, DetectResult, OcrResult
from tools.vision import Vision

FAMILIES = ["gemma4", "paligemma", "blip2"]
#: what each family's name is in its messages
NAMES = {"gemma4": "Gemma 4", "paligemma": "PaliGemma", "blip2": "BLIP-2"}
DETECTS = {"gemma4", "paligemma"}
SHORT = GenerationOptions(max_new_tokens=4)

RESULT_KEYS = set(DescribeResult.model_fields)
DETECT_KEYS = set(DetectResult.model_fields)


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def checkpoint(family: str, request: pytest.FixtureRequest):
    return request.getfixturevalue(f"tiny_{family}")


@pytest.fixture
def backend(family: str, request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{family}_backend")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "street.png"
    sample_image(640, 480).save(path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert err.endswith(errors[0] + "\n")
    return errors[0]


# ---------------------------------------------------------------- through Vision


def test_vision_describe_and_ocr_give_the_same_shape(family, backend, image):
    vision = Vision(backend, ImageLoader(AccessPolicy.for_files([image])))
    described = vision.describe([str(image)], options=SHORT)
    read = vision.ocr(str(image), options=SHORT)
    for result, cls in ((described, DescribeResult), (read, OcrResult)):
        assert isinstance(result, cls)
        assert result.family == family and result.image_tokens > 0
        assert result.prompt_tokens > result.image_tokens and 1 <= result.generated_tokens <= 4
        assert (result.budget is None) == (family != "gemma4")
        assert result.image_ids == [described.image_ids[0]]


def test_vision_detect_where_the_family_can(family, backend, image, tmp_path):
    vision = Vision(backend, ImageLoader(AccessPolicy.for_files([image])))
    if family in DETECTS:
        result = vision.detect(str(image), ["person", "car"], options=SHORT, annotated_path=tmp_path / "a.png")
        assert result.image_size == [640, 480] and result.labels == ["person", "car"]
        assert (tmp_path / "a.png").is_file()
    else:
        with pytest.raises(Unsupported, match=NAMES[family]):
            vision.detect(str(image), ["person"], options=SHORT)


def test_vision_segment_only_on_paligemma(family, backend, image):
    vision = Vision(backend, ImageLoader(AccessPolicy.for_files([image])))
    if family == "paligemma":
        assert vision.segment(str(image), "cat", options=SHORT).task == "segment"
    else:
        with pytest.raises(Unsupported, match=f"{NAMES[family]} models cannot segment"):
            vision.segment(str(image), "cat", options=SHORT)


# ---------------------------------------------------------------- through the command line


@pytest.mark.parametrize("command", ["describe", "ocr"])
def test_cli_describe_and_ocr_json_has_the_same_keys(family, checkpoint, image, capsys, command):
    code, out, err = run(capsys, command, str(image), "--model", str(checkpoint), "--max-new-tokens", "4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == RESULT_KEYS | ({"engine", "lines", "tiles", "pages"} if command == "ocr" else set())
    assert (result["task"], result["family"]) == (command, family)


def test_cli_detect(family, checkpoint, image, tmp_path, capsys):
    argv = ["detect", str(image), "person", "car", "--model", str(checkpoint), "--max-new-tokens", "4", "--json",
            "--out", str(tmp_path / "boxes.png")]
    code, out, err = run(capsys, *argv)
    if family in DETECTS:
        assert code == 0, err
        assert set(json.loads(out)) == DETECT_KEYS
    else:
        assert (code, out) == (1, "")
        line = one_error_line(err)
        assert NAMES[family] in line and "detect" in line
        assert not (tmp_path / "boxes.png").exists()


def test_cli_segment(family, checkpoint, image, tmp_path, capsys):
    code, out, err = run(
        capsys, "segment", str(image), "cat", "--model", str(checkpoint), "--max-new-tokens", "4", "--json",
        "--out", str(tmp_path / "seg.png"),
    )
    if family == "paligemma":
        assert code == 0, err
        result = json.loads(out)
        assert result["task"] == "segment" and set(result) == DETECT_KEYS
        assert any("VQ-VAE" in note for note in result["notes"])
    else:
        assert (code, out) == (1, "")
        assert NAMES[family] in one_error_line(err)


@pytest.mark.parametrize("fixed", ["paligemma", "blip2"])
def test_cli_budget_on_a_fixed_resolution_family_names_it(fixed, image, capsys, request):
    checkpoint = request.getfixturevalue(f"tiny_{fixed}")
    code, out, err = run(capsys, "describe", str(image), "--model", str(checkpoint), "--budget", "280")
    assert (code, out) == (1, "")
    line = one_error_line(err)
    assert NAMES[fixed] in line and "fixed resolution" in line


@pytest.mark.parametrize("preset", ["nucleus-0.1", "temperature-0.5"])
def test_cli_preset(family, checkpoint, image, capsys, preset):
    import torch

    # Sampling on random weights: the path it takes follows the global generator, which earlier tests move;
    # seeded, the test samples the same tokens whatever ran before it.
    torch.manual_seed(0)
    code, out, err = run(
        capsys, "describe", str(image), "--model", str(checkpoint), "--preset", preset, "--max-new-tokens", "3", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["generated_tokens"] <= 3


def test_every_family_has_a_tiny_builder():
    from tools.families import DIALECTS
    from tools.tiny import BUILDERS

    assert [d.family for d in DIALECTS if d.family not in BUILDERS] == []


def test_cli_tiny_model_builds_each_family(family, tmp_path, capsys):
    code, out, err = run(capsys, "tiny-model", str(tmp_path / family), "--family", family)
    assert code == 0, err
    assert load_model(out.strip()).family == family


# ---------------------------------------------------------------- precision and memory


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_dtypes_load_and_run(family, checkpoint, dtype):
    backend = load_model(str(checkpoint), dtype=dtype)
    assert backend.runtime.dtype == dtype
    assert run_task(backend, "ocr", [sample_image()], options=SHORT).generation.generated_tokens >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_quantize_without_cuda_is_refused_in_one_line(family, checkpoint, image, capsys):
    code, out, err = run(capsys, "ocr", str(image), "--model", str(checkpoint), "--quantize", "4bit")
    assert (code, out) == (1, "")
    assert "CUDA" in one_error_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_compile_is_refused_in_one_line_without_cuda_or_outside_gemma4(family, checkpoint, image, capsys):
    code, out, err = run(capsys, "ocr", str(image), "--model", str(checkpoint), "--compile")
    assert (code, out) == (1, "")
    assert ("CUDA" if family == "gemma4" else "Gemma 4 only") in one_error_line(err)


def test_quantize_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None)
    with pytest.raises(Unsupported, match="pip install bitsandbytes"):
        quantization_config("8bit", "auto")


def test_unknown_quantization_is_refused():
    with pytest.raises(InvalidRequest, match="4bit, 8bit"):
        quantization_config("3bit", "auto")
    assert quantization_config(None, "auto") is None

"""The vlm-agent command end to end on a tiny model, through its real argv, stdout and stderr."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from agent.cli import main
from tests.conftest import sample_image

RESULT_KEYS = {
    "text", "model", "family", "budget", "image_ids", "image_tokens", "prompt_tokens", "generated_tokens",
    "finish_reason", "history_turns", "timings", "notes", "task",
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tiny_model_builds_a_loadable_checkpoint(tmp_path, capsys):
    code, out, err = run(capsys, "tiny-model", str(tmp_path / "t"))
    assert code == 0
    assert out.strip() == str(tmp_path / "t")
    assert "gibberish" in err
    assert {"config.json", "model.safetensors", "chat_template.jinja", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "t").iterdir()
    }


def test_tiny_model_help_says_outputs_are_gibberish(capsys):
    with pytest.raises(SystemExit):
        main(["tiny-model", "--help"])
    assert "gibberish" in capsys.readouterr().out


def test_describe_json_reports_256_image_tokens_at_budget_280(tiny_gemma4, square_png, capsys):
    code, out, err = run(
        capsys, "describe", str(square_png), "--model", str(tiny_gemma4), "--budget", "280",
        "--max-new-tokens", "8", "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert RESULT_KEYS <= result.keys()
    assert result["image_tokens"] == 256
    assert (result["task"], result["family"], result["budget"]) == ("describe", "gemma4", 280)
    assert result["model"] == str(tiny_gemma4)
    assert result["image_ids"][0].startswith("img_") and len(result["image_ids"]) == 1
    assert 1 <= result["generated_tokens"] <= 8
    assert set(result["timings"]) == {"preprocess_ms", "generate_ms", "total_ms"}
    assert "loading" in err  # progress goes to stderr, never into the JSON


def test_describe_several_images_and_plain_output(tiny_gemma4, tmp_path, capsys):
    paths = []
    for n, size in enumerate([(512, 512), (64, 48)]):
        paths.append(tmp_path / f"{n}.png")
        sample_image(*size).save(paths[-1])
    code, out, err = run(
        capsys, "describe", *map(str, paths), "--prompt", "What differs?", "--model", str(tiny_gemma4),
        "--budget", "70", "--max-new-tokens", "4",
    )
    assert code == 0, err
    stats = err.strip().splitlines()[-1]
    assert stats.startswith("gemma4 · budget 70 · 127 image tokens · ")  # 64 + 63
    assert stats.endswith(" s · cut at the token limit")  # 4 tokens asked, 4 generated


def test_ocr_json(tiny_gemma4, square_png, capsys):
    code, out, err = run(capsys, "ocr", str(square_png), "--model", str(tiny_gemma4), "--max-new-tokens", "4", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "ocr" and result["image_tokens"] == 256


def test_detect_writes_annotated_png_and_json(tiny_gemma4, tmp_path, capsys):
    image = tmp_path / "street.jpg"
    sample_image(640, 480).save(image)
    annotated = tmp_path / "out" / "boxes.png"
    code, out, err = run(
        capsys, "detect", str(image), "person", "car", "--model", str(tiny_gemma4), "--out", str(annotated),
        "--max-new-tokens", "8", "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["task"] == "detect"
    assert result["labels"] == ["person", "car"]
    assert result["image_size"] == [640, 480]
    assert isinstance(result["detections"], list)
    assert result["annotated_path"] == str(annotated)
    assert Image.open(annotated).size == (640, 480)


def test_detect_default_output_lands_in_the_current_directory(tiny_gemma4, tmp_path, monkeypatch, capsys):
    image = tmp_path / "in" / "street.png"
    image.parent.mkdir()
    sample_image().save(image)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run(capsys, "detect", str(image), "cat", "--model", str(tiny_gemma4), "--max-new-tokens", "4")
    assert code == 0, err
    assert (work / "street-detections.png").is_file()
    assert "detections" in out and "annotated image:" in err


def png_data_uri() -> str:
    import io

    buffer = io.BytesIO()
    sample_image().save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_data_uri_input(tiny_gemma4, capsys):
    code, out, err = run(capsys, "describe", png_data_uri(), "--model", str(tiny_gemma4), "--max-new-tokens", "2", "--json")
    assert code == 0, err
    assert json.loads(out)["image_tokens"] == 266  # 64x48 at the default budget 280


def bad_inputs(tmp: Path) -> dict[str, list[str]]:
    (tmp / "dir").mkdir()
    (tmp / "text.png").write_text("not an image at all")
    (tmp / "empty.png").write_bytes(b"")
    good = tmp / "good.png"
    sample_image().save(good)
    data = good.read_bytes()
    (tmp / "truncated.png").write_bytes(data[: len(data) // 2])
    return {
        "missing file": ["describe", str(tmp / "missing.png")],
        "directory": ["describe", str(tmp / "dir")],
        "text renamed png": ["ocr", str(tmp / "text.png")],
        "empty file": ["ocr", str(tmp / "empty.png")],
        "truncated png": ["describe", str(tmp / "truncated.png")],
        "budget outside the set": ["describe", str(good), "--budget", "100"],
        "zero max new tokens": ["describe", str(good), "--max-new-tokens", "0"],
        "negative temperature": ["describe", str(good), "--temperature", "-1"],
        "empty label": ["detect", str(good), " "],
        "loopback url": ["describe", "http://127.0.0.1:9/cat.png"],
        "file scheme": ["describe", "file:///etc/passwd"],
        "bad data uri": ["describe", "data:image/png;base64,@@@"],
        "text data uri": ["describe", "data:text/plain;base64,aGVsbG8="],
        "unknown image id": ["describe", "img_0123456789abcdef"],
        "nul in prompt": ["describe", str(good), "--prompt", "a\x00b"],
        "missing model dir": ["describe", str(good), "--model", str(tmp / "no-model")],
        "out in a folder that is a file": ["detect", str(good), "cat", "--out", str(tmp / "empty.png" / "boxes.png")],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file", "directory", "text renamed png", "empty file", "truncated png",
        "budget outside the set", "zero max new tokens", "negative temperature", "empty label",
        "loopback url", "file scheme", "bad data uri", "text data uri", "unknown image id",
        "nul in prompt", "missing model dir", "out in a folder that is a file",
    ],
)
def test_bad_input_gives_one_line_error_and_nonzero_exit(case, tiny_gemma4, tmp_path, capsys):
    argv = bad_inputs(tmp_path)[case]
    if "--model" not in argv:
        argv = [*argv, "--model", str(tiny_gemma4)]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert err.endswith(errors[0] + "\n")  # the error is the last line, whole
    assert "Traceback" not in err and " at 0x" not in err
    assert len(errors[0]) < 300
    if case == "out in a folder that is a file":
        assert errors[0].startswith("error: Could not write the picture boxes.png: "), errors[0]


def test_unreachable_hub_model_is_one_line_with_local_copy_hint(square_png, capsys):
    code, out, err = run(capsys, "describe", str(square_png), "--model", "google/gemma-4-E2B-it")
    assert code == 1
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "is not on this machine" in line and "--model" in line


def test_model_from_environment(tiny_gemma4, square_png, monkeypatch, capsys):
    monkeypatch.setenv("VLM_AGENT_MODEL", str(tiny_gemma4))
    from agent.cli import build_parser

    assert build_parser().parse_args(["ocr", str(square_png)]).model == str(tiny_gemma4)


def test_console_script_end_to_end(tiny_gemma4, square_png):
    script = Path(sys.executable).parent / "vlm-agent"
    assert script.exists(), "install the project (pip install -e .) to get the vlm-agent command"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(script), "describe", str(square_png), "--model", str(tiny_gemma4), "--budget", "280",
         "--max-new-tokens", "4", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["image_tokens"] == 256  # stdout is the JSON and nothing else
    assert "FutureWarning" not in proc.stderr and "DeprecationWarning" not in proc.stderr, proc.stderr


def console(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "vlm-agent"
    return subprocess.run(
        [str(script), *argv], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )


def test_version_is_the_package_version():
    from importlib.metadata import version

    proc = console("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"vlm-agent {version('vlm-agent')}"


def test_demo_runs_the_tiny_model_and_reads_its_picture_for_real(tmp_path):
    for built in ("built", "reused"):
        proc = console("demo", str(tmp_path / "demo"), env={"HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "budget 280: 256 image tokens" in out and "gibberish on purpose" in out
        # The offline OCR is a real model: it reads the generated picture exactly.
        assert "'Read offline by vlm-agent' (exact)" in out
        assert "--model google/gemma-4-E2B-it" in out
        assert "FutureWarning" not in proc.stderr and "DeprecationWarning" not in proc.stderr
        # Imports are timed apart from the load on both runs, so the two load times mean the same.
        described = next(line for line in out.splitlines() if line.strip().startswith("describe"))
        assert re.search(rf"\({built} in .*: imports [\d.]+ s, loaded in [\d.]+ s\)$", described), described


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        # a hub that refuses connections at once: no retries, no backoff
        ({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}, "could not be reached"),
        ({"HF_HUB_OFFLINE": "1"}, "downloads are switched off"),
    ],
)
def test_default_model_without_network_says_so_in_one_line(tmp_path, square_png, env, reason):
    proc = console("describe", str(square_png), env={"HF_HOME": str(tmp_path / "hf"), **env})
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Retrying" not in proc.stderr
    assert lines[-1].startswith("error: Model 'google/gemma-4-E2B-it' is not on this machine")
    assert reason in lines[-1] and "hf download google/gemma-4-E2B-it" in lines[-1] and "--model" in lines[-1]


def test_detect_with_nothing_found_says_so_without_an_empty_table(tiny_gemma4, tmp_path, capsys):
    image = tmp_path / "street.png"
    sample_image(64, 48).save(image)
    # one token can hold no box
    code, out, err = run(capsys, "detect", str(image), "cat", "dog", "--model", str(tiny_gemma4),
                         "--max-new-tokens", "1", "--out", str(tmp_path / "a.png"))
    assert code == 0 and out == "no detections of cat, dog\n"


def test_offline_ocr_of_a_blank_page_says_no_text_and_counts_no_tokens(tmp_path, capsys):
    pytest.importorskip("rapidocr_onnxruntime")
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 80), "white").save(blank)
    code, out, err = run(capsys, "ocr", str(blank), "--engine", "rapidocr")
    assert code == 0 and out == ""
    lines = err.strip().splitlines()
    assert "no text found" in lines
    assert lines[-1].startswith("rapidocr · 0 lines of text · ") and "tokens" not in err


@pytest.mark.parametrize("command", ["describe", "ocr", "detect", "segment", "chat", "run"])
def test_every_model_command_takes_the_generation_flags(command):
    from agent.cli import build_parser

    positional = {"describe": ["a.png"], "ocr": ["a.png"], "detect": ["a.png", "cat"], "segment": ["a.png", "cat"],
                  "chat": [], "run": ["s.yaml"]}[command]
    args = build_parser().parse_args(
        [command, *positional, "--max-new-tokens", "7", "--temperature", "0.5", "--top-p", "0.9", "--budget", "70"]
    )
    assert (args.max_new_tokens, args.temperature, args.top_p, args.budget) == (7, 0.5, 0.9, 70)


def test_a_script_turn_without_an_image_is_told_to_add_images(tiny_gemma4, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLM_AGENT_HOME", str(tmp_path / "home"))
    script = tmp_path / "talk.yaml"
    script.write_text("- user: read it\n  tool: ocr\n- user: what is it?\n  images: [p.png]\n")
    sample_image(64, 48).save(tmp_path / "p.png")
    code = main(["run", str(script), "--model", str(tiny_gemma4), "--max-new-tokens", "4", "--temperature", "0.7"])
    transcript = json.loads(capsys.readouterr().out)
    assert code == 1 and transcript["failed"] == 1
    assert transcript["turns"][0]["error"] == "ocr needs an image: add images: [PATH] to the turn."
    assert "/image" not in transcript["turns"][0]["error"]
    assert transcript["turns"][1]["result"]["generated_tokens"] > 0  # the sampled turn ran


@pytest.mark.parametrize(
    ("family", "argv", "expected"),
    [
        ("blip2", ["detect", "{image}", "cat"], "BLIP-2 models cannot detect objects"),
        ("gemma4", ["segment", "{image}", "cat"], "Gemma 4 models cannot segment objects"),
        ("paligemma", ["describe", "{image}", "--budget", "1120"], "PaliGemma has a fixed resolution"),
    ],
)
def test_what_a_family_cannot_do_is_refused_before_any_weights_load(
    family, argv, expected, request, square_png, tmp_path
):
    """The capabilities come from the checkpoint's config: with its weights gone, the refusal is the same."""
    import shutil

    checkpoint = tmp_path / family
    shutil.copytree(request.getfixturevalue(f"tiny_{family}"), checkpoint)
    (checkpoint / "model.safetensors").unlink()  # anything that touched the weights would fail differently
    script = Path(sys.executable).parent / "vlm-agent"
    proc = subprocess.run(
        [str(script), *(a.replace("{image}", str(square_png)) for a in argv), "--model", str(checkpoint)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith("error: ") and expected in proc.stderr
    assert "Loading weights" not in proc.stderr and "loading" not in proc.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--max-sessions", "0"], "--max-sessions"), (["--max-sessions", "-3"], "--max-sessions"),
        (["--session-idle-s", "0"], "--session-idle-s"), (["--session-idle-s", "inf"], "--session-idle-s"),
        (["--session-idle-s", "nan"], "--session-idle-s"), (["--session-idle-s", "1e308"], "--session-idle-s"),
        (["--out-max-mb", "inf"], "--out-max-mb"), (["--out-max-mb", "1e308"], "--out-max-mb"),
        (["--out-max-mb", "nan"], "--out-max-mb"), (["--out-max-mb", "-1"], "--out-max-mb"),
        (["--out-max-days", "inf"], "--out-max-days"), (["--out-max-days", "1e308"], "--out-max-days"),
        (["--max-queue", "0"], "--max-queue"), (["--port", "99999"], "--port"),
        (["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api-timeout", "inf"], "--api-timeout"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_serve_numbers_that_cannot_work_are_refused_in_one_line(flags, named):
    """Each number flag of serve: out of range, infinite or not a number is one line naming the flag, never a traceback."""
    proc = console("serve", "--transport", "http", "--model", "none", "--port", "9", *flags, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line
    assert proc.stderr.startswith(f"error: {named} must be ") and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"stream": false, "model": "x"}', "error: --api-extra-body cannot set model, stream: vlm-agent writes those"),
        ("[1, 2]", "argument --api-extra-body: '[1, 2]' is not a JSON object"),
        ('{"top_k": 20', "argument --api-extra-body: '{\"top_k\": 20' is not a JSON object"),
    ],
    ids=["owned-fields", "a-list", "broken-json"],
)
def test_extra_request_fields_must_be_an_object_that_leaves_ours_alone(tmp_path, body, expected):
    sample_image().save(tmp_path / "a.png")
    proc = console(
        "describe", str(tmp_path / "a.png"), "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
        "--model", "m", "--api-extra-body", body, timeout=60,
    )
    assert proc.returncode != 0 and proc.stdout == "", proc
    assert expected in proc.stderr.splitlines()[-1], proc.stderr

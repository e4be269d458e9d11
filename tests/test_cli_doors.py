"""The rough edges a newcomer hits at the command line, each through the `vlm-agent` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VLM_AGENT = str(Path(sys.executable).parent / "vlm-agent")
ROOT = Path(__file__).resolve().parents[1]


def console(*argv: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VLM_AGENT, *argv], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == [proc.stderr.strip()] and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (None, "holds no config.json"),
        ({"architectures": ["Gemma4ForConditionalGeneration"]}, "names no model_type"),
        ({"model_type": 7}, "names no model_type"),
    ],
    ids=["empty folder", "config without model_type", "model_type not text"],
)
def test_a_local_folder_that_is_no_checkpoint_says_why_in_one_line(config, reason, square_png, tmp_path):
    folder = tmp_path / "emptydir"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    line = error_line(console("describe", str(square_png), "--model", str(folder)))
    assert reason in line and str(folder) in line and "--model" in line, line
    assert "download" not in line and "hf " not in line, line


def test_a_misspelled_flag_prints_the_commands_usage(square_png):
    proc = console("describe", str(square_png), "--modle", "m")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("usage: vlm-agent describe "), proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "vlm-agent describe: error: unrecognized arguments: --modle m (did you mean --model?)"
    )


@pytest.mark.parametrize(
    ("argv", "said", "not_said"),
    [
        (["detect", "{image}", "cat", "--consensus", "280"],
         "Give --consensus at least two different budgets to compare, for example 70,280,1120.", "[70, 280, 1120]"),
        (["detect", "{image}", "cat", "--consensus", "280,560", "--budget", "280"],
         "--consensus runs its own budgets on the whole image; leave --budget and --tiles unset.", "leave budget"),
        (["detect", "{image}", "cat", "--consensus", "280,560", "--tiles", "2"],
         "leave --budget and --tiles unset.", "leave budget"),
        (["describe", "{image}", "--max-new-tokens", "0"], "--max-new-tokens must be between 1 and 8192, got 0.",
         "max_new_tokens"),
        (["describe", "{image}", "--temperature", "0.001"],
         "--temperature must be 0 (greedy) or between 0.01 and 2, got 0.001.", "error: temperature"),
        (["describe", "{image}", "--top-p", "0"], "--top-p must be above 0 and at most 1, got 0.0.", "top_p"),
        (["ocr", "{image}", "--tiles", "9"], "--tiles must be between 1 and 8 across the long side, not 9.",
         "error: tiles"),
    ],
    ids=["one budget", "with a budget", "with tiles", "max new tokens", "temperature", "top-p", "tiles"],
)
def test_errors_on_the_command_line_are_worded_in_its_syntax(argv, said, not_said, square_png):
    argv = [arg.replace("{image}", str(square_png)) for arg in argv]
    line = error_line(console(*argv, "--model", "/nonexistent/model"))
    assert line.startswith("error: ") and line.endswith(said) and not_said not in line, line


def option_blocks(help_text: str) -> dict[str, str]:
    """Each option's lines of an argparse help, joined, keyed by its first flag."""
    blocks: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


@pytest.mark.parametrize("command", ["serve", "describe", "ocr", "detect", "segment", "chat", "run", "demo", "tiny-model"])
def test_help_shows_the_default_of_every_flag_that_has_one(command):
    from agent.cli import build_parser

    parser = build_parser()
    sub = next(action for action in parser._actions if action.dest == "command").choices[command]
    proc = console(command, "--help", env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    blocks = option_blocks(proc.stdout)
    for action in sub._actions:
        if not action.option_strings or action.default in (None, False, [], "==SUPPRESS=="):
            continue
        flag = action.option_strings[0]
        # the model's default is the environment's, which the help names rather than repeats
        shown = "$VLM_AGENT_MODEL" if action.dest == "model" else (
            f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
        )
        assert "default" in blocks[flag] and shown in blocks[flag], blocks[flag]
    if command == "serve":
        assert "(default 16)" in blocks["--max-queue"]


def test_verbose_logs_carry_no_pillow_chunk_lines(square_png):
    proc = console("-v", "describe", str(square_png), "--model", "/nonexistent/model")
    assert proc.returncode == 1
    assert "STREAM b'IHDR'" not in proc.stderr and "PIL" not in proc.stderr, proc.stderr[-2000:]


def test_the_demo_folder_is_ignored_by_git():
    proc = subprocess.run(
        ["git", "check-ignore", "-q", "vlm-agent-demo/tiny/config.json"], cwd=ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode == 0


@pytest.fixture
def small_png(tmp_path: Path) -> Path:
    """A picture the tiny Gemma 4 answers past 40 tokens without stopping (greedy: always the same)."""
    from tests.conftest import sample_image

    path = tmp_path / "small.png"
    sample_image(64, 48).save(path)
    return path


def test_a_tiny_checkpoint_gets_a_short_default_answer_and_says_so(tiny_gemma4, small_png):
    proc = console("describe", str(small_png), "--model", str(tiny_gemma4), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["generated_tokens"] == 32
    note = next(line for line in proc.stderr.splitlines() if "tiny random-weight checkpoint" in line)
    assert "--max-new-tokens defaults to 32" in note, note


def test_a_tiny_checkpoint_keeps_the_max_new_tokens_it_is_given(tiny_gemma4, small_png):
    proc = console("describe", str(small_png), "--model", str(tiny_gemma4), "--max-new-tokens", "40", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["generated_tokens"] == 40
    assert "tiny random-weight checkpoint" not in proc.stderr

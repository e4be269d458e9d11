"""Class 2 of the transport campaign: every way `vlm-agent chat` can fail to start is one line, exit 1.

The real binary in a subprocess with a question typed in: the model loads in the background, so the
failure surfaces when the first turn waits for it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import sample_image
from tests.hardening import VLM_AGENT, record, serve_http

TOKEN = "startup-s3cret"

#: a sitecustomize that kills the server child the chat starts (the chat marks its children)
DIE_IN_CHILD = """
import os
if os.environ.get("VLM_TEST_CHILD_MARK"):
    os._exit(3)
os.environ["VLM_TEST_CHILD_MARK"] = "1"
"""


def chat(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VLM_AGENT, "chat", *args], input="what is in it\n", capture_output=True, text=True, timeout=180,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLM_AGENT_HOME": str(home), **env},
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Exit 1, no traceback, and the reason on one `error:` line (the start-up banner comes first)."""
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, out
    assert "Traceback" not in out and "ExceptionGroup" not in out and 'File "' not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors, out
    for text in expected:
        assert text in errors[0], out


def test_a_missing_model_is_one_line(tmp_path):
    assert_one_line(chat(["--model", str(tmp_path / "nonexistent")], tmp_path), "No model directory")
    record(class_2=1)


def test_a_missing_image_is_one_line(tiny_gemma4, tmp_path):
    assert_one_line(chat(["--model", str(tiny_gemma4), str(tmp_path / "missing.png")], tmp_path), "missing.png")
    record(class_2=1)


def test_a_server_child_that_dies_during_start_up_is_one_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DIE_IN_CHILD)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    assert_one_line(chat(["--model", "none"], tmp_path, PYTHONPATH=path), "server.log")
    record(class_2=1)


@pytest.mark.parametrize(
    "token, expected",
    [("wrong-token", "HTTP 401"), (None, "not set")],
    ids=["wrong token", "token variable unset"],
)
def test_a_refused_token_is_one_line(tmp_path, token, expected):
    args = ["--model", "none", "--token-env", "VLM_STARTUP_TOKEN", "--allow-dir", str(tmp_path)]
    with serve_http(args, {"VLM_STARTUP_TOKEN": TOKEN}) as served:
        env = {"VLM_CHAT_TOKEN": token} if token else {}
        done = chat(["--server", served.url, "--token-env", "VLM_CHAT_TOKEN"], tmp_path, **env)
    assert_one_line(done, expected)
    record(class_2=1)


def test_an_unreachable_server_is_one_line(tmp_path):
    from tests.hardening import free_port

    assert_one_line(chat(["--server", f"http://127.0.0.1:{free_port()}/mcp"], tmp_path), "Cannot reach")
    record(class_2=1)


def test_a_model_that_cannot_load_is_one_line_with_the_reason(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-family"}')
    sample_image().save(tmp_path / "photo.png")
    done = chat(["--model", str(broken), str(tmp_path / "photo.png")], tmp_path)
    assert_one_line(done)
    assert "Error reading resource" not in done.stdout + done.stderr
    assert len(done.stdout.strip().removeprefix("error: ")) > 20
    record(class_2=1)

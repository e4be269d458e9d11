"""A real vLLM for the engine tests: its environment, the docs' command, and servers on loopback.

vLLM lives in its own virtual environment, ``.venv-vllm`` (``bash .ci/vllm-env`` builds it from
``.ci/vllm-requirements.txt``), since it pins its own torch and transformers. The servers run
the command docs/scaling.md prints, as printed: only the model (a tiny checkpoint), the address
(a free loopback port) and the settings this CPU-only machine needs are changed. A server is
ready after one real generation with an image, not when it answers /health: a model the
engine cannot run (a head size its attention has no kernel for) passes the health check and
dies on its first request.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.conftest import sample_image
from tests.hardening import free_port

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SCALING_DOC = ROOT / "docs" / "scaling.md"
#: set to "required" (CI does) to fail, not skip, when the vLLM environment is missing
REQUIRED_ENV = "VLM_AGENT_TEST_VLLM"
BUILD_HINT = "needs the vLLM environment: build it once with `bash .ci/vllm-env` (about 10 min, 6.3 GB)"
#: the key the docs' command reads from $VLLM_API_KEY; vlm-agent reads it from $VLM_AGENT_API_KEY
API_KEY = "vllm-test-key-5b1d"
#: what a CPU-only machine adds to the docs' command: vLLM's CPU backend runs float32 eagerly
#: (compiling takes minutes), and a few sequences at once are plenty for the tests
CPU_FLAGS = ("--dtype", "float32", "--enforce-eager", "--max-num-seqs", "4")
CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: the tiny models need little
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
#: launch to ready: 60-140 s alone on 2 cores, more when several start at once
READY_S = 600
#: "name: seconds" for each launch that got ready, for the run's summary (tests/conftest.py)
READY_LOG: list[str] = []


def require_vllm() -> None:
    """Skip the calling module when the vLLM environment is not built (fail where it is required)."""
    if VLLM_PYTHON.exists():
        return
    if os.environ.get(REQUIRED_ENV) == "required":
        pytest.fail(f"{REQUIRED_ENV}=required, but {VLLM_PYTHON.relative_to(ROOT)} is missing: {BUILD_HINT}")
    pytest.skip(BUILD_HINT, allow_module_level=True)


def docs_commands(text: str | None = None) -> list[list[str]]:
    """Every `vllm serve` command in docs/scaling.md's shell blocks, as argument lists."""
    text = SCALING_DOC.read_text(encoding="utf-8") if text is None else text
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                words = words[1:]
            if words[:2] == ["vllm", "serve"]:
                commands.append(words[:-1] if words[-1] == "&" else words)
    return commands


def docs_command(model: str) -> list[str]:
    """The docs' first `vllm serve MODEL ...` command."""
    for words in docs_commands():
        if words[2] == model:
            return words
    raise AssertionError(f"docs/scaling.md has no `vllm serve {model}` command")


def flags_of(words: Sequence[str]) -> dict[str, str | None]:
    """``--flag value`` and bare ``--flag`` words as a mapping (the value None for a bare one)."""
    flags: dict[str, str | None] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
            flags[word] = value
    return flags


def engine_command(docs: Sequence[str], checkpoint: Path, port: int) -> list[str]:
    """The docs' ``vllm serve MODEL FLAGS`` for ``checkpoint`` on 127.0.0.1:``port``.

    vllm-cpu's ``vllm`` console script looks up a package named vllm and stops, so the same
    flags go to the module it would run; the key comes from $VLLM_API_KEY as in the docs.
    """
    assert docs[:2] == ["vllm", "serve"], docs
    words = [word.replace("$VLLM_API_KEY", API_KEY) for word in docs[3:]]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        assert flag in words, f"the docs' command has no {flag}"
        words[words.index(flag) + 1] = value
    return [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint), *words, *CPU_FLAGS]


def image_message() -> dict:
    buffer = io.BytesIO()
    sample_image().save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi."}]}


class Vllm:
    """One vLLM server process group on a loopback port: launched, checked ready, killed, relaunched."""

    def __init__(
        self, name: str, command: Sequence[str], checkpoint: Path, port: int, logs: Path, key: str | None = None
    ) -> None:
        self.name = name
        self.command = list(command)
        self.checkpoint = checkpoint
        self.port = port
        self.key = key
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = logs / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.launched = 0.0
        #: seconds from launch to the first real generation, per launch
        self.ready_s: list[float] = []

    @property
    def model(self) -> str:
        """The name the engine serves the model under: the checkpoint path given as --model."""
        return str(self.checkpoint)

    def launch(self) -> Vllm:
        env = {**os.environ, **CPU_ENV}
        with self.log.open("ab") as sink:
            # A process group of its own: the API server's engine and worker processes go with it.
            self.proc = subprocess.Popen(
                self.command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.log.parent,
            )
        self.launched = time.monotonic()
        return self

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def wait_ready(self) -> Vllm:
        """Block until one real generation with an image succeeds; fail with the log otherwise."""
        assert self.proc is not None
        deadline = self.launched + READY_S
        body = {"model": self.model, "messages": [image_message()], "max_tokens": 2, "temperature": 0}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM ({self.name}) exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                answer = httpx.post(f"{self.url}/chat/completions", json=body, headers=self.headers(), timeout=120)
            except httpx.TransportError:
                time.sleep(1)
                continue
            if answer.status_code == 200 and answer.json().get("usage"):
                self.ready_s.append(round(time.monotonic() - self.launched, 1))
                READY_LOG.append(f"{self.name} {self.ready_s[-1]:.0f} s")
                return self
            if answer.status_code not in (404, 503):  # 404/503: the routes are up, the model not yet
                pytest.fail(
                    f"vLLM ({self.name}) failed its first generation (HTTP {answer.status_code}): "
                    f"{answer.text[:500]}\n{self.tail()}"
                )
            time.sleep(1)
        pytest.fail(f"vLLM ({self.name}) was not ready within {READY_S} s:\n{self.tail()}")

    def metric(self, name: str) -> float:
        """One of the engine's own Prometheus metrics (``vllm:NAME``), summed over its label sets."""
        metrics = httpx.get(f"http://127.0.0.1:{self.port}/metrics", headers=self.headers(), timeout=10).text
        found = re.findall(rf"^vllm:{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", metrics, flags=re.M)
        return sum(float(value) for value in found)

    def metric_label(self, name: str, label: str) -> str:
        """A label's value on one of the engine's info metrics (``vllm:cache_config_info``'s block_size)."""
        metrics = httpx.get(f"http://127.0.0.1:{self.port}/metrics", headers=self.headers(), timeout=10).text
        found = re.search(rf'^vllm:{re.escape(name)}\{{[^}}]*\b{re.escape(label)}="([^"]*)"', metrics, flags=re.M)
        assert found, f"the engine's metrics have no {name} with {label}"
        return found.group(1)

    def running_requests(self) -> float:
        """The engine's own count of requests being generated."""
        return self.metric("num_requests_running")

    def cache_counts(self) -> dict[str, float]:
        """Tokens looked up in and found in the prefix cache, images in the multimodal cache, so far."""
        names = ("prefix_cache_queries", "prefix_cache_hits", "mm_cache_queries", "mm_cache_hits")
        return {name: self.metric(f"{name}_total") for name in names}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """End the server's process group; SIGKILL ends it as a crash would."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # The engine and worker processes outlive the API server's wait: none may keep the port or memory.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve_docs_command(name: str, model: str, checkpoint: Path, logs: Path, without: Sequence[str] = ()) -> Vllm:
    """Launch the docs' `vllm serve MODEL ...` on ``checkpoint`` (less the flags in ``without``), logging in ``logs``."""
    port = free_port()
    command = [word for word in engine_command(docs_command(model), checkpoint, port) if word not in without]
    key = API_KEY if "--api-key" in command else None
    return Vllm(name, command, checkpoint, port, logs, key).launch()

"""Shared fixtures: tiny random-weight checkpoints built once per session, no network, no hub."""

from __future__ import annotations

import os

# Before transformers is imported anywhere: never reach for a hub in tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def sample_image(width: int = 64, height: int = 48) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 30, 30))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 4, height // 4, width // 2, height // 2], fill=(20, 200, 20))
    return image


def record_prompts(monkeypatch: pytest.MonkeyPatch, backend) -> list[str]:
    """The text prompts a processor-prompt backend (PaliGemma, BLIP-2) sends, in order."""
    sent: list[str] = []
    original = backend.run_prompt

    def spy(images, text, options, **kwargs):
        sent.append(text)
        return original(images, text, options, **kwargs)

    monkeypatch.setattr(backend, "run_prompt", spy)
    return sent


def model_says(monkeypatch: pytest.MonkeyPatch, backend, text: str) -> None:
    """Make the whole pipeline run, with ``text`` as what the model's tokens decode to."""
    monkeypatch.setattr(backend.processor, "decode", lambda *args, **kwargs: text)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def tiny_checkpoint(family: str):
    """A session fixture: a tiny random-weight checkpoint of ``family``, built once."""

    @pytest.fixture(scope="session")
    def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
        from tools.tiny import build_tiny

        return build_tiny(tmp_path_factory.mktemp("ckpt") / family, family)

    return build


def resident_backend(checkpoint: str):
    """A session fixture: the named checkpoint fixture loaded through the production loader."""

    @pytest.fixture(scope="session")
    def load(request: pytest.FixtureRequest):
        from tools.backends import load_backend

        return load_backend(str(request.getfixturevalue(checkpoint)))

    return load


tiny_gemma4 = tiny_checkpoint("gemma4")
tiny_paligemma = tiny_checkpoint("paligemma")
tiny_blip2 = tiny_checkpoint("blip2")
gemma4_backend = resident_backend("tiny_gemma4")
paligemma_backend = resident_backend("tiny_paligemma")
blip2_backend = resident_backend("tiny_blip2")


@pytest.fixture
def square_png(tmp_path: Path) -> Path:
    path = tmp_path / "square.png"
    sample_image(512, 512).save(path)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """The bad-input corpus's files, generated once per run (tests/corpus/make_corpus.py)."""
    from tests.corpus.make_corpus import make

    return make(tmp_path_factory.mktemp("corpus") / "c")


#: the bearer token of the shared HTTP server
HTTP_TOKEN = "hardening-s3cret-9f2c"


@pytest.fixture(scope="session")
def served(tiny_gemma4: Path, corpus, tmp_path_factory: pytest.TempPathFactory):
    """One real `vlm-agent serve --transport http` with a token, reading the corpus: its /mcp URL."""
    from tests.hardening import serve_http

    out = tmp_path_factory.mktemp("served-out")
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(corpus.allowed), "--out-dir", str(out),
            "--token-env", "VLM_HARDENING_TOKEN", "--max-queue", "16"]
    with serve_http(args, {"VLM_HARDENING_TOKEN": HTTP_TOKEN}) as server:
        yield server.url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.hardening import summary_line

    line = summary_line()
    if line:
        terminalreporter.write_sep("-", "hardening campaign")
        terminalreporter.write_line(line)

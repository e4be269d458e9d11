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


def sample_input(width: int = 64, height: int = 48):
    """``sample_image`` as the model layers take it: pixels with their content hash."""
    from tools.inputs import ImageInput

    return ImageInput.from_pixels(sample_image(width, height))


def run(model, task: str, images=(), prompt: str = "", history=(), budget=None, options=None, labels=()):
    """One task on a loaded model through its one interface (``Model.run``); PIL images are wrapped."""
    from PIL import Image as PILImage

    from tools.inputs import ImageInput
    from tools.options import GenerationOptions
    from tools.tasks import Ask

    inputs = tuple(ImageInput.from_pixels(i) if isinstance(i, PILImage.Image) else i for i in images)
    ask = Ask(task, inputs, prompt, tuple(labels), tuple(history), budget)  # type: ignore[arg-type]
    return model.run(ask, options or GenerationOptions())


def boxes(answer):
    """A detect or segment answer as (generation, parsed detections)."""
    return answer.generation, answer.detections


def replied(answer):
    """A chat answer as (generation, parsed reply)."""
    return answer.generation, answer.reply


def record_prompts(monkeypatch: pytest.MonkeyPatch, model) -> list[str]:
    """The text prompts a plain-text family (PaliGemma, BLIP-2) sends to its runtime, in order."""
    sent: list[str] = []
    original = model.runtime.generate

    def spy(prompt, options):
        sent.append(prompt.text)
        return original(prompt, options)

    monkeypatch.setattr(model.runtime, "generate", spy)
    return sent


def model_says(monkeypatch: pytest.MonkeyPatch, model, text: str) -> None:
    """Make the whole pipeline run, with ``text`` as what the model's tokens decode to."""
    monkeypatch.setattr(model.runtime.processor, "decode", lambda *args, **kwargs: text)


@pytest.fixture(autouse=True)
def same_torch_threads():
    """Put back torch's thread count after a test that set it (the benchmarks' ``--threads``): the
    order of a sum depends on it, so random weights' greedy tokens would depend on which tests ran first."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


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
    """A session fixture: the named checkpoint fixture loaded through the production loader (a ``Model``)."""

    @pytest.fixture(scope="session")
    def load(request: pytest.FixtureRequest):
        from tools.model import load_model

        return load_model(str(request.getfixturevalue(checkpoint)))

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


@pytest.fixture(scope="session")
def media(corpus) -> Path:
    """The PDFs and clips of tools/tiny/media.py, good and hostile, in the corpus's allowed folder (so the
    shared HTTP server ``served`` reads them too): the folder."""
    from tools.tiny.media import make_media

    return make_media(corpus.allowed / "media")


tiny_qwen3_vl = tiny_checkpoint("qwen3_vl")
qwen3_vl_backend = resident_backend("tiny_qwen3_vl")


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
    from tests.vllm import READY_LOG

    line = summary_line()
    if line:
        terminalreporter.write_sep("-", "hardening campaign")
        terminalreporter.write_line(line)
    if READY_LOG:
        terminalreporter.write_line("vLLM servers, launch to first generation: " + ", ".join(READY_LOG))

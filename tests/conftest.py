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


@pytest.fixture(scope="session")
def tiny_gemma4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("ckpt") / "gemma4", "gemma4")


@pytest.fixture(scope="session")
def gemma4_backend(tiny_gemma4: Path):
    from tools.backends import load_backend

    return load_backend(str(tiny_gemma4))


@pytest.fixture(scope="session")
def tiny_paligemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("ckpt") / "paligemma", "paligemma")


@pytest.fixture(scope="session")
def paligemma_backend(tiny_paligemma: Path):
    from tools.backends import load_backend

    return load_backend(str(tiny_paligemma))


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tools.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("ckpt") / "blip2", "blip2")


@pytest.fixture(scope="session")
def blip2_backend(tiny_blip2: Path):
    from tools.backends import load_backend

    return load_backend(str(tiny_blip2))


@pytest.fixture
def square_png(tmp_path: Path) -> Path:
    path = tmp_path / "square.png"
    sample_image(512, 512).save(path)
    return path

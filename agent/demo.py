"""``vlm-agent demo``: the first run, which proves the install works and says what comes next.

Two things run with nothing to download: a tiny random-weight Gemma 4 describes a picture
through the same loading and generation code as a real checkpoint (its answer is gibberish
on purpose), and the offline PP-OCR engine, whose real models ship inside its wheel, reads
the text the command printed on that picture.
"""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tools.model import DEFAULT_MODEL
from tools.inputs import AccessPolicy, ImageLoader
from tools.options import GenerationOptions
from tools.results import DescribeResult, OcrResult

#: what the demo picture says, and so what the offline OCR should read back
DEMO_TEXT = "Read offline by vlm-agent"
DEMO_BUDGET = 280
DEMO_TOKENS = 16


def demo_picture(path: Path) -> Path:
    """A 512x512 picture with ``DEMO_TEXT`` printed large enough to read."""
    image = Image.new("RGB", (512, 512), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 320, 511, 511), fill="teal")
    draw.text((24, 140), DEMO_TEXT, fill="black", font=ImageFont.load_default(size=34))
    image.save(path)
    return path


def tiny_checkpoint(folder: Path) -> tuple[Path, bool]:
    """The tiny checkpoint in ``folder``: reused when one is there, built otherwise."""
    from tools.tiny import build_tiny

    if (folder / "config.json").is_file():
        return folder, False
    return build_tiny(folder, "gemma4"), True


def import_stack() -> None:
    """Import what building and loading a tiny Gemma 4 both need (torch, torchvision through the
    image and video processors, transformers and its Gemma 4 classes).

    Timed on its own before either: otherwise a first run counts these seconds as building and
    a reuse counts them as loading, and the two load times mean different things.
    """
    import transformers

    for name in (
        "Gemma4ForConditionalGeneration", "Gemma4Processor", "Gemma4ImageProcessor", "Gemma4VideoProcessor",
        "Gemma4AudioFeatureExtractor", "GemmaTokenizer", "AutoProcessor", "AutoModelForImageTextToText",
    ):
        getattr(transformers, name)


def run_demo(folder: Path) -> tuple[DescribeResult, OcrResult, dict[str, float | bool | Path]]:
    facts: dict[str, float | bool | Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    picture = demo_picture(folder / "demo.png")
    started = time.perf_counter()
    import_stack()
    from tools.model import load_model
    from tools.vision import Vision

    facts["import_s"] = time.perf_counter() - started
    started = time.perf_counter()
    checkpoint, facts["built"] = tiny_checkpoint(folder / "tiny")
    facts["build_s"] = time.perf_counter() - started
    loader = ImageLoader(AccessPolicy.for_files([str(picture)]))
    image_id = loader.load(str(picture)).image_id
    started = time.perf_counter()
    backend = load_model(str(checkpoint))
    facts["load_s"] = time.perf_counter() - started
    vision = Vision(backend, loader)
    described = vision.describe(
        [image_id], "", budget=DEMO_BUDGET, options=GenerationOptions(max_new_tokens=DEMO_TOKENS)
    )
    read = Vision(None, loader).ocr(image_id, budget=None, engine="rapidocr")
    facts["picture"], facts["checkpoint"] = picture, checkpoint
    return described, read, facts


def summary(described: DescribeResult, read: OcrResult, facts: dict[str, float | bool | Path]) -> list[str]:
    """The lines a person reads after the first run."""
    built = "built" if facts["built"] else "reused"
    answer = described.text.encode("unicode_escape").decode("ascii")
    found = read.text.strip()
    verdict = "exact" if found == DEMO_TEXT else f"expected {DEMO_TEXT!r}"
    return [
        "vlm-agent works. What just ran:",
        f"  describe  tiny random-weight Gemma 4 ({built} in {facts['checkpoint']}: imports {facts['import_s']:.1f} s, "
        f"loaded in {facts['load_s']:.1f} s)",
        f"            budget {described.budget}: {described.image_tokens} image tokens, "
        f"{described.prompt_tokens} prompt + {described.generated_tokens} generated tokens "
        f"in {described.timings.total_ms / 1000:.2f} s",
        f"            answer (gibberish on purpose: random weights, real code path): {answer}",
        f"  ocr       offline PP-OCR (rapidocr) read {facts['picture']}: {found!r} ({verdict}) "
        f"in {read.timings.total_ms / 1000:.2f} s",
        "Next, real answers from a real checkpoint (the first run downloads it, about 10 GB):",
        f"  vlm-agent describe {facts['picture']} --model {DEFAULT_MODEL}",
        "or, where there is no network, a local copy: --model ./gemma-4-E2B-it",
    ]

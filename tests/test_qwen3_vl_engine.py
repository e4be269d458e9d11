"""Qwen3-VL's dialect on the engine runtime: `transformers serve` running the tiny checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import sample_image, tiny_checkpoint
from tests.test_transformers_serve import LETTERS, call, server_over, transformers_serve
from tools.families.qwen3_vl import Qwen3VL
from tools.model import Model
from tools.runtimes.api import ApiSettings
from tools.runtimes.engine import EngineRuntime

pytestmark = [pytest.mark.serving, pytest.mark.anyio]

tiny_qwen3_vl = tiny_checkpoint("qwen3_vl")


@pytest.fixture(scope="module")
def engine(tiny_qwen3_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Model]:
    """Qwen3-VL's dialect over an engine serving the tiny checkpoint; answers biased to plain letters."""
    from transformers import AutoTokenizer

    # Random weights can write bytes that are not UTF-8, which breaks a stream: letters only.
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen3_vl))
    bias = {str(tokenizer.convert_tokens_to_ids(t)): 100.0 for t in [*"abcdefghijklmnopqrstuvwxyz", "Ġ"]}
    with transformers_serve(tiny_qwen3_vl, tmp_path_factory.mktemp("serve-qwen")) as url:
        settings = ApiSettings(base_url=url, model=str(tiny_qwen3_vl), family="qwen3_vl", extra_body={"logit_bias": bias})
        runtime = EngineRuntime.connect(settings)
        yield Model(Qwen3VL.for_engine(budgets=runtime.settings.budgets), runtime)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen-engine-images")
    sample_image(512, 512).save(root / "square.png")
    sample_image(640, 480).save(root / "street.png")
    return root


async def test_describe_history_and_detect_on_an_engine(engine, workdir) -> None:
    server = server_over(engine, workdir)
    square, street = str(workdir / "square.png"), str(workdir / "street.png")
    one = await call(server, "describe", {"images": [square], "prompt": "Compare.", "max_new_tokens": 4})
    two = await call(server, "describe", {"images": [square, street], "prompt": "Compare.", "max_new_tokens": 4})
    assert (one["family"], one["runtime"], one["budget"]) == ("qwen3_vl", "engine", None)
    assert LETTERS.fullmatch(one["text"])
    # the engine's own count: the second picture (640 x 480 at Qwen's own resolution, 300 tokens) got there
    assert two["prompt_tokens"] - one["prompt_tokens"] >= 300

    history = [
        {"role": "user", "content": "What is it?", "images": [street]},
        {"role": "assistant", "content": "A red square."},
    ]
    followed = await call(
        server, "describe", {"images": [square], "prompt": "Compare.", "history": history, "max_new_tokens": 4}
    )
    assert followed["history_turns"] == 2
    assert followed["prompt_tokens"] - one["prompt_tokens"] >= 300

    boxes = await call(server, "detect", {"image": street, "labels": ["person"], "max_new_tokens": 4})
    assert (boxes["family"], boxes["image_size"]) == ("qwen3_vl", [640, 480])

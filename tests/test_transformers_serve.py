"""The OpenAI-compatible backend against a real, independent server: `transformers serve`.

The test starts `transformers serve` on a free loopback port with the tiny Gemma 4
checkpoint and drives describe, ocr, detect, history, streaming and a tool call through
it, mostly through the MCP server as a client would. Random weights write gibberish, and
can write bytes that are not UTF-8, which breaks a stream: requests bias the logits
toward plain letters. Where a test needs a particular answer (boxes, a tool call), it
scripts the model with transformers serve's own `generation_config` field: each prefix of
the script biases its next token above every shorter one, so the greedy model spells it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi", reason="needs the transformers[serving] extra")
pytest.importorskip("uvicorn", reason="needs the transformers[serving] extra")
pytest.importorskip("openai", reason="needs the transformers[serving] extra")

from mcp import Client  # noqa: E402

from mcp_server.server import Settings, build_server  # noqa: E402
from agent.cli import cli_words  # noqa: E402
from tests.conftest import run, sample_image  # noqa: E402
from tools.errors import ModelNotFound  # noqa: E402
from tools.families.gemma4 import Gemma4  # noqa: E402
from tools.model import Model  # noqa: E402
from tools.options import GenerationOptions  # noqa: E402
from tools.runtimes.api import ApiSettings  # noqa: E402
from tools.runtimes.engine import EngineRuntime  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.anyio]

READY_S = 90
LETTERS = re.compile(r"[a-z ]+")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"transformers serve was not ready within {READY_S} s:\n{log.read_text()[-3000:]}")


@contextmanager
def transformers_serve(checkpoint: Path, home: Path) -> Iterator[str]:
    """`transformers serve` on ``checkpoint`` at a loopback port, offline: its /v1 URL."""
    (home / "hub").mkdir()  # must exist, or /v1/models fails
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(home / "hub")}
    port = free_port()
    log = home / "serve.log"
    command = [
        sys.executable, "-m", "transformers.cli.transformers", "serve", str(checkpoint),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(process, f"http://127.0.0.1:{port}/health", log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def engine_url(tiny_gemma4: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with transformers_serve(tiny_gemma4, tmp_path_factory.mktemp("serve")) as url:
        yield url


@pytest.fixture(scope="module")
def tokenizer(tiny_gemma4: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_gemma4))


def token_ids(tokenizer, pieces: list[str]) -> list[int]:
    """Ids spelling ``pieces``: a special token as itself, anything else character by character."""
    ids: list[int] = []
    for piece in pieces:
        for token in [piece] if piece in tokenizer.get_vocab() else list(piece):
            ids.append(tokenizer.convert_tokens_to_ids(token))
            assert ids[-1] != tokenizer.unk_token_id, token
    return ids


def scripted(tiny_gemma4: Path, tokenizer, pieces: list[str]) -> dict:
    """transformers serve's `generation_config` field, making the greedy model write ``pieces``, then stop."""
    from transformers import GenerationConfig

    script = token_ids(tokenizer, [*pieces, "<turn|>"])
    config = GenerationConfig.from_pretrained(str(tiny_gemma4)).to_dict()
    config.update(do_sample=False, sequence_bias=[[script[: k + 1], 100.0 * (k + 1)] for k in range(len(script))])
    return {"generation_config": json.dumps(config)}


def connect(engine_url: str, tiny_gemma4: Path, **settings) -> Model:
    """Gemma 4's dialect over the engine runtime, as ``load_model`` pairs them for --backend openai."""
    runtime = EngineRuntime.connect(ApiSettings(base_url=engine_url, model=str(tiny_gemma4), **settings))
    return Model(Gemma4.for_engine(budgets=runtime.settings.budgets), runtime)


@pytest.fixture(scope="module")
def letters(engine_url: str, tiny_gemma4: Path, tokenizer) -> Model:
    """A backend whose answers are plain lowercase letters and spaces (float logit_bias values)."""
    bias = {str(i): 100.0 for i in token_ids(tokenizer, ["abcdefghijklmnopqrstuvwxyz", "▁"])}
    return connect(engine_url, tiny_gemma4, max_concurrency=2, extra_body={"logit_bias": bias})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine-images")
    sample_image(512, 512).save(root / "square.png")
    sample_image(640, 480).save(root / "street.jpg")
    return root


def server_over(backend: Model, workdir: Path):
    settings = Settings(model=backend.model_id, allow_dirs=[str(workdir)], out_dir=workdir / "out")
    return build_server(settings, load=lambda *args, **kwargs: backend)


async def call(server, tool: str, arguments: dict) -> dict:
    async with Client(server) as client:
        result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    return result.structured_content


async def test_describe_sends_every_image_and_reports_engine_counts(letters, workdir):
    server = server_over(letters, workdir)
    square, street = str(workdir / "square.png"), str(workdir / "street.jpg")
    one = await call(server, "describe", {"images": [square], "prompt": "Compare.", "max_new_tokens": 6})
    two = await call(server, "describe", {"images": [square, street], "prompt": "Compare.", "max_new_tokens": 6})
    assert (one["family"], one["runtime"], one["image_tokens"], one["budget"]) == ("gemma4", "engine", None, None)
    assert LETTERS.fullmatch(one["text"]) and one["generated_tokens"] == 6
    assert one["finish_reason"] == "length" and any("max_new_tokens=6" in n for n in one["notes"])
    # The engine's own prompt count: the second picture (266 tokens at the engine's default) got there.
    assert two["prompt_tokens"] - one["prompt_tokens"] >= 266
    assert one["timings"]["generate_ms"] > 0 and one["timings"]["total_ms"] >= one["timings"]["generate_ms"]


async def test_history_turns_reach_the_engine(letters, workdir):
    server = server_over(letters, workdir)
    square = str(workdir / "square.png")
    alone = await call(server, "describe", {"images": [square], "prompt": "And the colour?", "max_new_tokens": 3})
    history = [
        {"role": "user", "content": "What is it?", "images": [str(workdir / "street.jpg")]},
        {"role": "assistant", "content": "A red square."},
    ]
    followed = await call(
        server, "describe", {"images": [square], "prompt": "And the colour?", "history": history, "max_new_tokens": 3}
    )
    assert followed["history_turns"] == 2
    assert followed["prompt_tokens"] - alone["prompt_tokens"] >= 266  # the earlier turn's image and text


async def test_ocr_through_the_engine(letters, workdir):
    result = await call(server_over(letters, workdir), "ocr", {"image": str(workdir / "street.jpg"), "max_new_tokens": 5})
    assert (result["task"], result["engine"], result["family"], result["runtime"]) == ("ocr", "vlm", "gemma4", "engine")
    assert LETTERS.fullmatch(result["text"]) and result["lines"] is None


async def test_detect_parses_the_engines_answer_into_pixel_boxes(engine_url, tiny_gemma4, tokenizer, workdir):
    answer = '[{"box_2d":[100,200,500,600],"label":"cat"}]'
    backend = connect(engine_url, tiny_gemma4, extra_body=scripted(tiny_gemma4, tokenizer, [answer]))
    result = await call(
        server_over(backend, workdir), "detect", {"image": str(workdir / "street.jpg"), "labels": ["cat"], "max_new_tokens": 64}
    )
    assert result["text"] == answer and result["finish_reason"] == "stop"
    assert [(d["label"], d["box"]) for d in result["detections"]] == [("cat", [128, 48, 384, 240])]
    assert Path(result["annotated_path"]).is_file()


def test_streamed_pieces_make_up_the_answer(letters):
    from tools.runtimes.streaming import streaming

    pieces: list[str] = []
    with streaming(lambda piece, count: pieces.append(piece)):
        generation = run(letters, "describe", [sample_image()], "Describe.", options=GenerationOptions(max_new_tokens=8)).generation
    assert len(pieces) >= 2 and "".join(pieces).strip() == generation.text
    assert generation.generated_tokens == 8


def test_tool_call_round_trip(engine_url, tiny_gemma4, tokenizer, letters):
    tools = [{
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The local time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    messages: list[dict] = [{"role": "user", "content": "What time is it in Paris?"}]
    caller = connect(engine_url, tiny_gemma4, extra_body=scripted(
        tiny_gemma4, tokenizer, ["<|tool_call>", "call:get_time{city:", '<|"|>', "Paris", '<|"|>', "}", "<tool_call|>"]
    ))
    plain = letters.runtime.complete_chat(messages, options=GenerationOptions(max_new_tokens=2))
    asked = caller.runtime.complete_chat(messages, tools, GenerationOptions(max_new_tokens=64))
    assert asked.finish_reason == "tool_calls" and asked.text == ""
    assert [(c.name, c.arguments) for c in asked.tool_calls] == [("get_time", {"city": "Paris"})]
    assert asked.prompt_tokens > plain.prompt_tokens  # the tool declarations were in the prompt
    call_id = asked.tool_calls[0].id
    messages += [asked.message(), {"role": "tool", "tool_call_id": call_id, "name": "get_time", "content": "12:00"}]
    answer = letters.runtime.complete_chat(messages, tools, GenerationOptions(max_new_tokens=4))
    assert LETTERS.fullmatch(answer.text) and answer.tool_calls == [] and answer.generated_tokens == 4
    assert answer.prompt_tokens > asked.prompt_tokens  # the call and its result went back in


async def test_compare_budgets_is_refused_clearly_rather_than_run_identically(engine_url, tiny_gemma4, letters, workdir):
    arguments = {"image": str(workdir / "square.png"), "task": "ocr", "budgets": [70, 280], "max_new_tokens": 2}
    undeclared = server_over(letters, workdir)
    # Declared, but transformers serve refuses the mm_processor_kwargs field outright.
    declared = server_over(connect(engine_url, tiny_gemma4, budgets=True), workdir)
    for server, expected in [(undeclared, "budgets_supported"), (declared, "does not take per-request budgets")]:
        async with Client(server) as client:
            refused = await client.call_tool("compare_budgets", arguments)
        assert refused.is_error and expected in refused.content[0].text, refused.content
        assert "\n" not in refused.content[0].text and "--" not in refused.content[0].text
        assert refused.meta["vlm-agent/error"]["param"] == "budgets_supported"


def test_a_model_the_engine_does_not_serve_is_named(engine_url):
    # `transformers serve` pinned to one model now lists that model alone on /v1/models (it
    # used to list only the hub cache's models, empty on a fresh machine), so the refusal comes
    # at connect; an engine that lists nothing useful refuses the first request instead.
    # Either way the user is told which model is missing and how to name the right one.
    try:
        backend = connect(engine_url, Path("google/gemma-4-E2B-it"))
    except ModelNotFound as exc:
        refusal = exc
    else:
        with pytest.raises(ModelNotFound) as caught:
            run(backend, "ocr", [sample_image()], options=GenerationOptions(max_new_tokens=2)).generation
        refusal = caught.value
    # flags only in the command line's wording; the core names the setting
    assert "'google/gemma-4-E2B-it'" in str(refusal) and "--api-model" in cli_words(refusal)
    assert refusal.param == "api_model" and "--" not in str(refusal)

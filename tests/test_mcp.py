"""The MCP server through a real MCP client, in-process, on a tiny model."""

from __future__ import annotations

import base64
import json
import io
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from PIL import Image

from mcp_server.server import Settings, build_server
from tests.conftest import sample_image
from tools.model import load_model

pytestmark = pytest.mark.anyio

TOOLS = {"describe", "ocr", "detect", "compare_budgets", "chat", "extract"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mcp")
    (root / "images").mkdir()
    sample_image(512, 512).save(root / "images" / "square.png")
    sample_image(640, 480).save(root / "images" / "street.jpg")
    noise = Image.effect_noise((3000, 2000), 80).convert("RGB")
    noise.save(root / "images" / "big.png")
    return root


def make_server(workdir: Path, model: str, backend=None, **settings):
    """A server reading ``workdir/images``; ``backend`` stands in for loading when given."""
    chosen = Settings(model=model, allow_dirs=[str(workdir / "images")], out_dir=workdir / "out", **settings)
    return build_server(chosen, load=None if backend is None else lambda *a, **k: backend)


@pytest.fixture(scope="module")
def server(workdir, tiny_gemma4):
    return make_server(workdir, str(tiny_gemma4))


def img(workdir: Path, name: str) -> str:
    return str(workdir / "images" / name)


async def test_lists_four_tools_with_input_and_output_schemas(server):
    async with Client(server) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 40
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema and "properties" in tool.output_schema
    assert tools["describe"].input_schema["required"] == ["images"]
    assert set(tools["detect"].input_schema["required"]) == {"image", "labels"}
    assert {"image_tokens", "image_ids", "timings", "budget", "model", "family"} <= set(
        tools["describe"].output_schema["properties"]
    )
    assert {"detections", "image_size", "annotated_path"} <= set(tools["detect"].output_schema["properties"])
    assert {"runs", "recommended_budget", "threshold"} <= set(tools["compare_budgets"].output_schema["properties"])


async def test_describe_returns_structured_result_and_reusable_image_id(server, workdir):
    async with Client(server) as client:
        first = await client.call_tool("describe", {"images": [img(workdir, "square.png")], "max_new_tokens": 4})
        assert not first.is_error, first.content
        result = first.structured_content
        assert (result["image_tokens"], result["budget"], result["family"]) == (256, 280, "gemma4")
        assert [block.type for block in first.content] == ["text"]
        image_id = result["image_ids"][0]
        assert image_id in first.content[0].text  # text-only clients see the id too

        again = await client.call_tool(
            "describe",
            {
                "images": [image_id],
                "prompt": "And now?",
                "history": [
                    {"role": "user", "content": "What is it?", "images": [image_id]},
                    {"role": "assistant", "content": "A red square."},
                ],
                "budget": 70,
                "max_new_tokens": 4,
            },
        )
        assert not again.is_error, again.content
        assert again.structured_content["history_turns"] == 2
        assert again.structured_content["image_tokens"] == 2 * 64


async def test_data_uri_image(server):
    buffer = io.BytesIO()
    sample_image().save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    async with Client(server) as client:
        result = await client.call_tool("ocr", {"image": uri, "budget": 70, "max_new_tokens": 4})
    assert not result.is_error, result.content
    assert result.structured_content["task"] == "ocr"
    assert result.structured_content["image_tokens"] == 63


async def test_detect_returns_boxes_and_a_client_sized_picture(server, workdir):
    """The picture goes out sized for common clients, with a link to the full size that resources/read serves."""
    async with Client(server) as client:
        result = await client.call_tool(
            "detect", {"image": img(workdir, "big.png"), "labels": ["person", "car"], "max_new_tokens": 8}
        )
        assert not result.is_error, result.content
        assert [block.type for block in result.content] == ["text", "image", "resource_link"]
        link = result.content[2]
        full_size = await client.read_resource(link.uri)
        refused, codes = [], []
        for name in ("..%2F..%2Fchat.sqlite3", "chat.sqlite3", "detect-000000000000.png"):
            try:
                await client.read_resource(f"vlm-agent://pictures/{name}")
            except MCPError as exc:  # the client raises the server's error
                refused.append(str(exc))
                codes.append((exc.error.code, (exc.error.data or {}).get("uri")))
    data = result.structured_content
    assert data["image_size"] == [3000, 2000] and data["labels"] == ["person", "car"]
    assert isinstance(data["detections"], list)
    png = base64.b64decode(result.content[1].data)
    assert len(base64.b64encode(png)) <= 1_400_000 and len(png) <= 1_000_000
    shown = Image.open(io.BytesIO(png)).size
    assert max(shown) <= 1568
    full = Path(data["annotated_path"])
    assert full.parent == workdir / "out" and Image.open(full).size == (3000, 2000)
    # nothing silently cut: the text says the picture was downscaled and where the full one is
    assert f"downscaled from 3000x2000 to {shown[0]}x{shown[1]}; full size at {link.uri}" in result.content[0].text
    assert link.uri == f"vlm-agent://pictures/{full.name}" and link.mime_type == "image/png"
    assert link.size == full.stat().st_size
    [blob] = full_size.contents
    assert blob.mime_type == "image/png" and base64.b64decode(blob.blob) == full.read_bytes()
    # only the server's own pictures: no path, no other file, no picture it never wrote
    assert len(refused) == 3 and "Unknown resource" in refused[0]
    assert all("No picture named" in message for message in refused[1:])
    # not there: invalid params with the URI, as for any missing resource, not an internal error
    assert codes[1:] == [(INVALID_PARAMS, f"vlm-agent://pictures/{name}") for name in ("chat.sqlite3", "detect-000000000000.png")]


async def call_with_progress(server, tool: str, arguments: dict):
    """A tool call's result and every progress notification it sent: (progress, total, message)."""
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async with Client(server) as client:
        result = await client.call_tool(tool, arguments, progress_callback=on_progress)
        # The SDK runs each progress callback as a task of its own: the last notifications, sent just before
        # the result, may reach on_progress just after call_tool returns.
        await anyio.sleep(0.2)
    return result, progress


async def test_compare_budgets_reports_documented_tokens_with_progress(server, workdir):
    result, progress = await call_with_progress(
        server, "compare_budgets",
        {"image": img(workdir, "square.png"), "task": "detect", "prompt": "cat, dog", "max_new_tokens": 4},
    )
    assert not result.is_error, result.content
    data = result.structured_content
    assert [run["image_tokens"] for run in data["runs"]] == [64, 121, 256, 529, 1089]
    assert [run["budget"] for run in data["runs"]] == [70, 140, 280, 560, 1120]
    assert data["reference_budget"] == 1120 and data["runs"][-1]["agreement"] == 1.0
    assert data["recommended_budget"] in (70, 140, 280, 560, 1120)
    assert data["metric"] == "box_f1" and data["labels"] == ["cat", "dog"]
    # each row's own encoding and prefill, and one decode shared by the batch
    timings = [run["timings"] for run in data["runs"]]
    assert all(t["prefill_ms"] > 0 for t in timings) and len({t["decode_ms"] for t in timings}) == 1
    assert "shared decode" in result.content[0].text
    # (a "loading" notification may come first, when this call is the one that waits for the model)
    assert [message for _, total, message in progress if total == 5] == [
        "budget 70", "budget 140", "budget 280", "budget 560", "budget 1120", "done"
    ]
    assert Path(data["picture_path"]).is_file()
    assert [block.type for block in result.content] == ["text", "image", "resource_link"]


@pytest.mark.parametrize(("task", "metric"), [("ocr", "1-cer"), ("describe", "text_similarity")])
async def test_compare_budgets_other_tasks(server, workdir, task, metric):
    async with Client(server) as client:
        result = await client.call_tool(
            "compare_budgets",
            {"image": img(workdir, "street.jpg"), "task": task, "budgets": [70, 280], "max_new_tokens": 3},
        )
    assert not result.is_error, result.content
    assert result.structured_content["metric"] == metric
    assert [run["image_tokens"] for run in result.structured_content["runs"]] == [63, 266]


BAD_CALLS = [
    ("describe", {"images": ["{dir}/missing.png"]}, "No image at"),
    ("describe", {"images": ["{dir}"]}, "is a folder"),
    ("describe", {"images": []}, "at least one image"),
    ("describe", {"images": ["/etc/passwd"]}, "outside the allowed folders"),
    ("describe", {"images": ["../../../etc/hostname"]}, "outside the allowed folders"),
    ("describe", {"images": ["http://127.0.0.1:1/x.png"]}, "private or local network"),
    ("describe", {"images": ["file:///etc/passwd"]}, "not supported"),
    ("describe", {"images": ["data:image/png;base64,!!!"]}, "invalid base64"),
    ("describe", {"images": ["img_0000000000000000"]}, "Unknown image_id"),
    ("describe", {"images": "square.png"}, "Argument 'images'"),
    ("describe", {"images": ["{sq}"], "budget": 100}, "use one of 70 / 140 / 280 / 560 / 1120"),
    ("describe", {"images": ["{sq}"], "budget": "big"}, "Argument 'budget'"),
    ("describe", {"images": ["{sq}"], "max_new_tokens": -1}, "max_new_tokens"),
    ("describe", {"images": ["{sq}"], "max_new_tokens": 10**9}, "max_new_tokens"),
    ("describe", {"images": ["{sq}"], "temperature": 5}, "temperature"),
    ("describe", {"images": ["{sq}"], "prompt": "x" * 1_000_000}, "characters; the limit"),
    ("describe", {"images": ["{sq}"], "prompt": "a\x00b"}, "NUL"),
    ("describe", {"images": ["{sq}"] * 100}, "at most 16"),
    ("describe", {"images": ["{sq}"], "history": [{"role": "system", "content": "x"}]}, "history.0.role"),
    ("describe", {"images": ["{sq}"], "history": ["hello"]}, "history.0"),
    ("detect", {"image": "{sq}", "labels": []}, "at least one non-empty label"),
    ("detect", {"image": "{sq}", "labels": [""]}, "at least one non-empty label"),
    ("compare_budgets", {"image": "{sq}", "budgets": [70]}, "at least two different budgets"),
    ("compare_budgets", {"image": "{sq}", "budgets": [70, 99]}, "Budget 99"),
    ("compare_budgets", {"image": "{sq}", "task": "detect"}, "non-empty label"),
    ("compare_budgets", {"image": "{sq}", "task": "segment"}, "Argument 'task'"),
    ("no_such_tool", {}, "Unknown tool"),
]


@pytest.mark.parametrize(("tool", "arguments", "expected"), BAD_CALLS, ids=[f"{c[0]}-{c[2]}" for c in BAD_CALLS])
async def test_bad_input_is_a_one_sentence_tool_error_and_the_server_keeps_serving(
    server, workdir, tool, arguments, expected
):
    square = img(workdir, "square.png")

    def fill(value):
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, str):
            return value.replace("{sq}", square).replace("{dir}", str(workdir / "images"))
        return value

    arguments = {key: fill(value) for key, value in arguments.items()}
    async with Client(server) as client:
        result = await client.call_tool(tool, arguments)
        assert result.is_error
        message = result.content[0].text
        assert expected in message
        assert "\n" not in message and "Traceback" not in message and " at 0x" not in message
        assert "Error" not in message.split()[0]  # no exception class names
        assert str(workdir) not in message or str(workdir) in str(arguments)
        ok = await client.call_tool("describe", {"images": [square], "max_new_tokens": 2})
        assert not ok.is_error


async def test_model_that_cannot_load_answers_every_call_with_the_reason(workdir):
    server = make_server(workdir, str(workdir / "no-such-model"))
    async with Client(server) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
        for _ in range(2):
            result = await client.call_tool("describe", {"images": [img(workdir, "square.png")]})
            assert result.is_error and "No model directory" in result.content[0].text


class Gate:
    """Holds the model's describe until released, to fill the queue deterministically."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.entered = threading.Event()
        self.release = threading.Event()
        real = backend.run

        def run(*args, **kwargs):
            self.entered.set()
            self.release.wait(30)
            return real(*args, **kwargs)

        backend.run = run


async def test_requests_past_the_queue_depth_are_told_to_retry(workdir, tiny_gemma4):
    import anyio

    backend = load_model(str(tiny_gemma4))
    gate = Gate(backend)
    server = make_server(workdir, str(tiny_gemma4), backend, max_queue=2)
    call = {"images": [img(workdir, "square.png")], "max_new_tokens": 2}
    results = []
    async with Client(server) as client:

        async def one():
            results.append(await client.call_tool("describe", call))

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            group.start_soon(one)
            await anyio.to_thread.run_sync(gate.entered.wait, 30)
            busy = await client.call_tool("describe", call)
            gate.release.set()
        assert busy.is_error and "busy" in busy.content[0].text and "retry" in busy.content[0].text
        assert [r.is_error for r in results] == [False, False]
        assert not (await client.call_tool("describe", call)).is_error


async def test_out_of_memory_is_reported_and_the_next_call_works(workdir, tiny_gemma4):
    import torch

    backend = load_model(str(tiny_gemma4))
    real = backend.runtime.model.generate
    calls = {"n": 0}

    def generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    backend.runtime.model.generate = generate
    server = make_server(workdir, str(tiny_gemma4), backend)
    call = {"images": [img(workdir, "square.png")], "max_new_tokens": 2}
    async with Client(server) as client:
        first = await client.call_tool("describe", call)
        assert first.is_error and "ran out of device memory" in first.content[0].text
        assert "GiB" not in first.content[0].text
        assert not (await client.call_tool("describe", call)).is_error


async def test_answers_stream_as_progress_with_token_totals(server, workdir):
    result, deltas = await call_with_progress(
        server, "describe", {"images": [img(workdir, "square.png")], "max_new_tokens": 12}
    )
    assert not result.is_error
    streamed = [d for d in deltas if d[1] == 12]
    assert streamed, deltas
    assert [d[0] for d in streamed] == sorted(d[0] for d in streamed)  # tokens so far only grow
    assert streamed[-1][0] <= result.structured_content["generated_tokens"]


async def test_chat_tool_returns_text_or_tool_calls(server, workdir):
    async with Client(server) as client:
        result = await client.call_tool(
            "chat",
            {
                "message": "How many cars?",
                "images": [img(workdir, "street.jpg")],
                "history": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
                "max_new_tokens": 6,
            },
        )
        assert not result.is_error, result.content
        data = result.structured_content
        assert data["task"] == "chat" and isinstance(data["tool_calls"], list)
        assert data["history_turns"] == 2 and data["image_tokens"] == 266
        empty = await client.call_tool("chat", {"message": "  ", "images": []})
        assert empty.is_error and "message is empty" in empty.content[0].text


async def test_model_resource_describes_the_resident_model(server, tiny_gemma4):
    async with Client(server) as client:
        info = json.loads((await client.read_resource("vlm-agent://model")).contents[0].text)
    assert info["model"] == str(tiny_gemma4) and info["family"] == "gemma4"
    assert info["budgets"] == [70, 140, 280, 560, 1120] and info["default_budget"] == 280
    assert info["chat"] is True and info["detect"] is True and info["context_window"] > 0
    # how the server keeps a conversation's context, and within what
    assert info["context"]["policy"] == "chat-template" and info["context"]["limit_tokens"] == info["context_window"]
    assert info["runtime"] == "local" and info["tasks"] == ["chat", "describe", "detect", "extract", "ocr"]


async def test_tool_errors_carry_a_machine_readable_code(server, workdir):
    async with Client(server) as client:
        missing = await client.call_tool("ocr", {"image": img(workdir, "nothing.png")})
        unknown = await client.call_tool("ocr", {"image": "img_00000000000000ff"})
        bad = await client.call_tool("ocr", {"image": 5})
    # in _meta, not as structured content, which clients check against the tool's output schema
    assert [r.structured_content for r in (missing, unknown, bad)] == [None, None, None]
    assert missing.meta["vlm-agent/error"] == {"code": "bad_image"}
    assert unknown.meta["vlm-agent/error"] == {"code": "unknown_image"}
    assert bad.meta["vlm-agent/error"] == {"code": "invalid_request", "param": "image"}


async def test_each_tool_is_a_module_level_function_callable_on_its_own(workdir, gemma4_backend, tiny_gemma4):
    """The tools read the resident model from the lifespan's state in the request context: one can be
    called directly, with nothing but a context that holds that state."""
    import inspect
    from types import SimpleNamespace

    import mcp_server.handlers as tools_module
    from mcp_server.resident import Resident, State

    assert {tool.__name__ for tool in tools_module.TOOLS} == TOOLS
    for tool in tools_module.TOOLS:
        assert getattr(tools_module, tool.__name__) is tool and inspect.iscoroutinefunction(tool)
        assert "ctx" in inspect.signature(tool).parameters and tool.__doc__
    resident = Resident(
        Settings(model=str(tiny_gemma4), allow_dirs=[str(workdir / "images")], out_dir=workdir / "out"),
        load=lambda *a, **k: gemma4_backend,
    )
    progress: list[tuple] = []

    async def report_progress(*args) -> None:
        progress.append(args)

    state = State(resident)
    ctx = SimpleNamespace(request_context=SimpleNamespace(lifespan_context=state), report_progress=report_progress)
    result = await tools_module.describe([img(workdir, "square.png")], ctx, max_new_tokens=3)
    assert not result.is_error and result.structured_content["generated_tokens"] <= 3
    assert result.structured_content["family"] == "gemma4" and progress  # the load, then streamed text

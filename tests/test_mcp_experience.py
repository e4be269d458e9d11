"""What MCP clients show and offer: server identity, tool titles and icons, log messages, prompts, completion."""

from __future__ import annotations

import base64
import threading
from importlib.metadata import version
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, PromptReference, ResourceTemplateReference

from mcp_server.server import Settings, build_server
from tests.conftest import sample_image
from tools.model import load_model

pytestmark = pytest.mark.anyio


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    sample_image(96, 64).save(folder / "photo.png")
    return folder


def server_on(images: Path, model: str, load=None):
    settings = Settings(model=model, allow_dirs=[str(images)], out_dir=images.parent / "out")
    return build_server(settings, load=load)


async def test_server_and_tools_introduce_themselves(images):
    async with Client(server_on(images, "none"), mode="legacy") as client:
        info = client.server_info
        tools = (await client.list_tools()).tools
    assert (info.name, info.version) == ("vlm-agent", version("vlm-agent"))
    assert info.title and "vlm-agent" in info.title
    for tool in tools:
        assert tool.title and tool.title != tool.name
        [icon] = tool.icons
        assert icon.mime_type == "image/svg+xml" and icon.src.startswith("data:image/svg+xml;base64,")
        assert base64.b64decode(icon.src.split(",", 1)[1]).startswith(b"<svg ")
    assert len({tool.icons[0].src for tool in tools}) == len(tools)  # one picture per tool


class Logged:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    async def __call__(self, params) -> None:
        self.messages.append((params.level, str(params.data)))

    def text(self) -> str:
        return "\n".join(f"{level}: {data}" for level, data in self.messages)


@pytest.mark.filterwarnings("ignore:The logging capability is deprecated")  # the 2025 request, on purpose
async def test_log_messages_reach_clients_that_ask_and_only_them(tiny_gemma4, images):
    """Load progress, cache hits and refusals, at the level asked with logging/setLevel."""
    release = threading.Event()

    def gated(*args, **kwargs):
        release.wait(60)
        return load_model(*args, **kwargs)

    server = server_on(images, str(tiny_gemma4), load=gated)
    photo = str(images / "photo.png")
    asked, silent = Logged(), Logged()
    async with Client(server, mode="legacy", logging_callback=asked) as client, \
            Client(server, mode="legacy", logging_callback=silent) as quiet:
        assert client.server_capabilities.logging is not None
        await client.set_logging_level("info")

        async def release_when_waiting():
            while not asked.messages:
                await anyio.sleep(0.02)
            release.set()

        async with anyio.create_task_group() as group:
            group.start_soon(release_when_waiting)
            first = await client.call_tool("describe", {"images": [photo], "max_new_tokens": 2})
        again = await client.call_tool("describe", {"images": [first.structured_content["image_ids"][0]], "max_new_tokens": 2})
        refused = await client.call_tool("describe", {"images": [photo], "budget": 99})
        await quiet.call_tool("describe", {"images": [photo], "budget": 99})
        await client.set_logging_level("error")
        await client.call_tool("describe", {"images": [photo], "budget": 99})
    assert not first.is_error and not again.is_error and refused.is_error
    text = asked.text()
    assert "info: waiting for" in text and " loaded in " in text
    assert again.structured_content["cache"]["vision"] == "hit"
    assert "info: describe: vision cache hit for img_" in text
    warnings = [data for level, data in asked.messages if level == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith("describe refused: Budget 99 ")
    assert silent.messages == []  # never asked


async def test_a_2026_client_opts_in_per_request(images):
    server = server_on(images, "none")
    wanted, unwanted = Logged(), Logged()
    bad = {"images": [str(images / "photo.png")]}
    async with Client(server, mode="2026-07-28", logging_callback=wanted, log_level="warning") as client:
        assert client.protocol_version == "2026-07-28"
        assert (await client.call_tool("describe", bad)).is_error
    async with Client(server, mode="2026-07-28", logging_callback=unwanted) as client:
        assert (await client.call_tool("describe", bad)).is_error
    assert [level for level, _ in wanted.messages] == ["error", "warning"]  # no model, then the refusal
    assert unwanted.messages == []


async def test_prompts_for_the_common_jobs(images):
    async with Client(server_on(images, "none")) as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        found = await client.get_prompt("find_objects", {"image": "img_0123456789abcdef", "labels": "person, red car"})
        plain = await client.get_prompt("describe", {"image": "street.jpg"})
    assert set(listed) == {"describe", "read_text", "find_objects", "compare_budgets"}
    assert all(p.title and p.description for p in listed.values())
    assert [a.name for a in listed["find_objects"].arguments if a.required] == ["image", "labels"]
    [message] = found.messages
    assert message.role == "user"
    assert "`detect`" in message.content.text and "['person', 'red car']" in message.content.text
    assert "prompt=" not in plain.messages[0].content.text  # no empty arguments invented


@pytest.mark.parametrize(
    ("name", "arguments", "said"),
    [
        ("nope", {}, "Unknown prompt 'nope'; use one of compare_budgets, describe, find_objects or read_text."),
        ("find_objects", {"image": "a.png"}, "The find_objects prompt needs 'labels'."),
        ("read_text", {}, "The read_text prompt needs 'image'."),
        ("read_text", {"image": "a.png", "labels": "x"}, "The read_text prompt has no argument 'labels'; it takes 'image', 'budget'."),
    ],
)
async def test_a_wrong_prompt_request_is_invalid_params_in_one_sentence(images, name, arguments, said):
    # the SDK alone answers these with "Internal server error" (and a traceback in the log)
    async with Client(server_on(images, "none")) as client:
        with pytest.raises(MCPError) as refused:
            await client.get_prompt(name, arguments)
    assert (refused.value.error.code, refused.value.error.message) == (INVALID_PARAMS, said)


async def test_completion_of_budgets_labels_images_and_pictures(tiny_gemma4, images):
    server = server_on(images, str(tiny_gemma4))
    photo = str(images / "photo.png")
    find = PromptReference(name="find_objects")
    async with Client(server) as client:
        detected = await client.call_tool("detect", {"image": photo, "labels": ["person", "car", "cart"], "max_new_tokens": 2})
        budgets = await client.complete(PromptReference(name="describe"), {"name": "budget", "value": "1"})
        labels = await client.complete(find, {"name": "labels", "value": "person, ca"})
        image = await client.complete(find, {"name": "image", "value": "img_"})
        pictures = await client.complete(
            ResourceTemplateReference(uri="vlm-agent://pictures/{name}"), {"name": "name", "value": "detect-"}
        )
    assert budgets.completion.values == ["140", "1120"]
    assert labels.completion.values == ["person, cart", "person, car"]  # most recent first, no repeats
    assert image.completion.values == detected.structured_content["image_ids"]
    assert pictures.completion.values == [Path(detected.structured_content["annotated_path"]).name]
    async with Client(server, mode="legacy") as client:
        assert client.server_capabilities.completions is not None

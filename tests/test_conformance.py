"""The official MCP conformance suite against `vlm-agent serve` over HTTP, and a 2026-07-28 client.

The suite (``@modelcontextprotocol/conformance``) and the Node 22 it needs are installed
with ``npm ci --prefix tests/conformance``; where they are not, its test is skipped and says
so. ``tests/conformance/expected-failures.yaml`` lists the scenarios expected to fail: only
those that call fixtures (``test_*`` tools, prompts and ``test://`` resources) that the SDKs'
own test servers define (the completion scenario completes a fixture prompt's argument; a
prompt that does not exist is an invalid-params error here).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mcp import Client
from PIL import Image

from tests.conftest import sample_image
from tests.hardening import serve_http

HERE = Path(__file__).parent / "conformance"
SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
BASELINE = HERE / "expected-failures.yaml"


def node_22() -> str | None:
    """A Node.js of version 22 or later: the one installed beside the suite, else the one on PATH."""
    for candidate in (HERE / "node_modules" / ".bin" / "node", shutil.which("node")):
        if candidate is None or not Path(candidate).exists():
            continue
        try:
            found = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            continue
        if found.startswith("v") and int(found[1:].split(".")[0]) >= 22:
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def served(tiny_gemma4, tmp_path_factory):
    images = tmp_path_factory.mktemp("conformance-images")
    sample_image(128, 96).save(images / "photo.png")
    home = tmp_path_factory.mktemp("conformance-home")
    with serve_http(["--model", str(tiny_gemma4), "--allow-dir", str(images)], env={"VLM_AGENT_HOME": str(home)}) as s:
        yield s, images


def test_the_official_conformance_suite_passes_all_but_the_fixture_scenarios(served, tmp_path):
    node = node_22()
    if node is None or not SUITE.is_file():
        pytest.skip(
            "the MCP conformance suite needs Node >= 22 and its package: npm ci --prefix tests/conformance "
            "(the node@22 package there brings its own Node 22)"
        )
    server, _ = served
    run = subprocess.run(
        [node, str(SUITE), "server", "--url", server.url, "--expected-failures", str(BASELINE), "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-4000:]
    assert "Baseline check passed" in report
    # the protocol's own scenarios ran and passed, the ones this issue was about included
    results = {
        # folders are named server-SCENARIO-TIMESTAMP
        re.sub(r"-\d{4}-\d\d-\d\dT.*", "", path.parent.name).removeprefix("server-"): json.loads(path.read_text())
        for path in tmp_path.glob("*/checks.json")
    }
    for scenario in ("server-initialize", "logging-set-level", "tools-list", "dns-rebinding-protection",
                     "prompts-list", "resources-list"):
        assert scenario in results, sorted(results)
        assert {check["status"] for check in results[scenario]} == {"SUCCESS"}, results[scenario]
    # Completion of the fixture prompt fails for the fixture's reason only: the prompt does not exist here.
    [completion] = results["completion-complete"]
    assert completion["status"] == "FAILURE" and "-32602" in completion["errorMessage"], completion
    assert "No prompt named 'test_prompt_with_arguments'" in completion["errorMessage"], completion


@pytest.mark.anyio
async def test_a_client_on_protocol_2026_07_28_gets_every_tool(served):
    """Every tool, the model resource, a prompt and a picture link, for a client that pins the newest version."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    server, images = served
    photo = str(images / "photo.png")
    calls = {
        "describe": {"images": [photo], "prompt": "What is it?", "max_new_tokens": 4},
        "ocr": {"image": photo, "max_new_tokens": 4},
        "detect": {"image": photo, "labels": ["cat"], "max_new_tokens": 4},
        "compare_budgets": {"image": photo, "budgets": [70, 140], "max_new_tokens": 2},
        "chat": {"message": "What is this?", "images": [photo], "max_new_tokens": 4},
    }
    async with httpx2.AsyncClient(timeout=120) as http:
        async with Client(streamable_http_client(server.url, http_client=http), mode="2026-07-28") as client:
            assert client.protocol_version == "2026-07-28"
            listed = {tool.name for tool in (await client.list_tools()).tools}
            results = {name: await client.call_tool(name, arguments) for name, arguments in calls.items()}
            model = json.loads((await client.read_resource("vlm-agent://model")).contents[0].text)
            prompt = await client.get_prompt("read_text", {"image": photo})
            link = results["detect"].content[-1]
            picture = await client.read_resource(link.uri)
    assert listed == set(calls)
    for name, result in results.items():
        assert not result.is_error, (name, result.content)
        assert result.structured_content, name
    assert results["describe"].structured_content["generated_tokens"] > 0
    assert [run["budget"] for run in results["compare_budgets"].structured_content["runs"]] == [70, 140]
    assert model["family"] == "gemma4"
    assert "`ocr`" in prompt.messages[0].content.text
    assert link.type == "resource_link"
    png = base64.b64decode(picture.contents[0].blob)
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (128, 96)


INSPECTOR = HERE / "node_modules" / "@modelcontextprotocol" / "inspector" / "cli" / "build" / "cli.js"
NPX = "npx -y -p node@22 -p @modelcontextprotocol/inspector mcp-inspector"


def documented_inspector_commands() -> list[str]:
    """The Inspector command lines of docs/mcp.md, continuation lines joined."""
    text = (Path(__file__).parents[1] / "docs" / "mcp.md").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.startswith(NPX)]


def test_the_documented_inspector_commands_work_as_printed(tmp_path):
    """docs/mcp.md's commands, run in the README's setup folder; npx is swapped for the same packages installed here."""
    import os
    import sys

    node = node_22()
    if node is None or not INSPECTOR.is_file():
        pytest.skip("the MCP Inspector needs Node >= 22 and its package: npm ci --prefix tests/conformance")
    commands = documented_inspector_commands()
    assert len(commands) == 3
    # the README's setup: a tiny model and an image in the current folder
    from tools.tiny import build_tiny

    build_tiny(str(tmp_path / "tiny"), "gemma4")
    Image.new("RGB", (512, 512), "teal").save(tmp_path / "img.png")
    # the Inspector starts the server with whatever `node` and `vlm-agent` the PATH holds, as npx would
    path = os.pathsep.join([str(Path(node).parent), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "VLM_AGENT_HOME": str(tmp_path / "home")}
    outputs = []
    for command in commands:
        local = command.replace(NPX, f"{node} {INSPECTOR}")
        run = subprocess.run(["bash", "-c", local], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (command, run.stdout[-2000:], run.stderr[-2000:])
        outputs.append(json.loads(run.stdout))
    listed, called, prompts = outputs
    assert {tool["name"] for tool in listed["tools"]} == {"describe", "ocr", "detect", "compare_budgets", "chat"}
    assert called["structuredContent"]["task"] == "ocr" and not called.get("isError")
    assert {prompt["name"] for prompt in prompts["prompts"]} == {"describe", "read_text", "find_objects", "compare_budgets"}

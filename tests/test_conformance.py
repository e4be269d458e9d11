"""Real clients against a real `vlm-agent serve`: the official MCP conformance suite, the MCP
Inspector's CLI, a TypeScript-SDK client and a Python client on protocol 2026-07-28.

The Node packages (the suite, the Inspector, the TypeScript SDK and a Node 22 to run them) are
installed with ``npm ci --prefix tests/conformance``; where they are not, their tests are skipped
and say so. docs/mcp.md's commands run here as printed, in a folder laid out as the README's "Set
up and go" leaves it, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mcp import Client
from PIL import Image

from tests.conftest import sample_image
from tests.hardening import VLM_AGENT, check_tool_error, free_port, serve_http

ROOT = Path(__file__).parents[1]
HERE = Path(__file__).parent / "conformance"
MODULES = HERE / "node_modules"
SUITE = MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
INSPECTOR = MODULES / "@modelcontextprotocol" / "inspector"
BASELINE = HERE / "expected-failures.yaml"
TOOLS = ("describe", "ocr", "detect", "compare_budgets", "chat", "extract")
#: the Inspector 2 launcher needs Node 22.19
NODE_AT_LEAST = (22, 19)


def node_22() -> str | None:
    """A Node.js new enough for the Node packages: the one installed beside them, else the one on PATH."""
    for candidate in (MODULES / ".bin" / "node", shutil.which("node")):
        if candidate is None or not Path(candidate).exists():
            continue
        try:
            found = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            continue
        parts = found.strip().removeprefix("v").split(".")
        if found.startswith("v") and tuple(int(part) for part in parts[:2]) >= NODE_AT_LEAST:
            return str(candidate)
    return None


def need(*paths: Path) -> str:
    node = node_22()
    if node is None or not all(path.exists() for path in paths):
        pytest.skip(
            "needs Node >= 22.19 and the Node packages of tests/conformance: npm ci --prefix tests/conformance "
            "(the node@22 package there brings its own Node 22)"
        )
    return node


@pytest.fixture(scope="module")
def served(tiny_gemma4, tmp_path_factory):
    images = tmp_path_factory.mktemp("conformance-images")
    sample_image(128, 96).save(images / "photo.png")
    home = tmp_path_factory.mktemp("conformance-home")
    with serve_http(["--model", str(tiny_gemma4), "--allow-dir", str(images)], env={"VLM_AGENT_HOME": str(home)}) as s:
        yield s, images


@pytest.fixture
def setup_folder(tiny_gemma4, tmp_path) -> Path:
    """A folder as the README's "Set up and go" leaves it: the project's files (here: its tests
    folder), its virtual environment in .venv, and what ``vlm-agent demo`` made in vlm-agent-demo."""
    from agent.demo import demo_picture

    folder = tmp_path / "project"
    (folder / "vlm-agent-demo").mkdir(parents=True)
    (folder / ".venv").symlink_to(Path(sys.prefix))
    (folder / "tests").symlink_to(ROOT / "tests")
    (folder / "vlm-agent-demo" / "tiny").symlink_to(tiny_gemma4)
    demo_picture(folder / "vlm-agent-demo" / "demo.png")
    return folder


def documented(fence_holding: str) -> list[str]:
    """The command lines of docs/mcp.md's ```sh block that holds ``fence_holding``, continuations joined."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / "mcp.md").read_text(), re.S)
    [block] = [b for b in blocks if fence_holding in b]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def environment(node: str, folder: Path) -> dict[str, str]:
    # The commands find `node` first on the PATH, as npx's -p node@22 would put it there.
    path = os.pathsep.join([str(Path(node).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", "VLM_AGENT_HOME": str(folder / "home")}


def scenario_results(results: Path) -> dict[str, list[dict]]:
    # folders are named server-SCENARIO-TIMESTAMP
    return {
        re.sub(r"-\d{4}-\d\d-\d\dT.*", "", path.parent.name).removeprefix("server-"): json.loads(path.read_text())
        for path in results.glob("*/checks.json")
    }


#: checks of the suite that read a fixture tool's answer within a fixed 500-600 ms (the suite's own
#: timer, with its Node process and the server sharing the machine); the server answers them in a
#: few milliseconds, so a miss means a busy machine, and the run is repeated once
SUITE_TIMED = {
    "server-stateless:sep-2575-http-server-no-independent-requests-on-stream",
    "server-stateless:sep-2575-server-no-log-without-loglevel",
}


def unexpected(report: str) -> list[str]:
    """The checks a conformance report lists as failing outside the baseline."""
    found: list[str] = []
    for block in report.split("Unexpected failures (not in baseline):")[1:]:
        for line in block.splitlines()[1:]:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
            if not line.startswith("✗"):
                break
            found.append(line.removeprefix("✗").strip())
    return found


def run_documented(lines: list[str], node: str, folder: Path) -> tuple[int, str]:
    """The documented commands run in ``folder``, on a free port: their exit status and output."""
    port = str(free_port())
    script = "\n".join(line.replace("8000", port) for line in lines)
    # Stop at the first failing line, and never leave the server running.
    script = f"set -e\ntrap 'kill $server 2>/dev/null || true' EXIT\n{script}"
    run = subprocess.Popen(["bash", "-c", script], cwd=folder, env=environment(node, folder),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        report, _ = run.communicate(timeout=600)
    finally:
        # a server that never started leaves the script waiting: end it and all it started
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    return run.returncode, report


def test_the_documented_conformance_commands_pass_both_requirement_sets(setup_folder):
    """docs/mcp.md's conformance lines, as printed (another port, and no npm ci: the packages are here)."""
    node = need(SUITE)
    lines = documented("conformance server")
    assert lines[0] == "npm ci --prefix tests/conformance"
    returncode, report = run_documented(lines[1:], node, setup_folder)
    if returncode != 0 and set(unexpected(report)) and set(unexpected(report)) <= SUITE_TIMED:
        # Checks the suite gives a fixed few hundred milliseconds, against the clock of a machine
        # that may be busy: one more run tells a slow moment from a wrong answer.
        shutil.rmtree(setup_folder / "conformance-results", ignore_errors=True)
        returncode, report = run_documented(lines[1:], node, setup_folder)
    assert returncode == 0, report[-6000:]
    assert report.count("Baseline check passed") == 2, report[-6000:]
    stateless = scenario_results(setup_folder / "conformance-results" / "2026-07-28")
    stateful = scenario_results(setup_folder / "conformance-results" / "2025-11-25")
    # the protocol's own scenarios ran, on each wire, and every check of theirs passed
    both = ("tools-list", "tools-call-error", "dns-rebinding-protection", "prompts-list", "resources-list",
            "server-sse-multiple-streams")
    for results, scenarios in [
        (stateless, (*both, "caching", "sep-2164-resource-not-found", "input-required-result-unsupported-methods")),
        (stateful, (*both, "server-initialize", "logging-set-level", "ping", "server-session-lifecycle")),
    ]:
        for scenario in scenarios:
            assert scenario in results, sorted(results)
            assert {check["status"] for check in results[scenario]} <= {"SUCCESS", "INFO"}, results[scenario]
        # every message the server sent is valid for the protocol version it spoke
        for scenario, checks in results.items():
            assert all(c["status"] == "SUCCESS" for c in checks if c["id"] == "wire-schema-valid"), scenario
    # Completion of the fixture prompt fails for the fixture's reason only: the prompt does not exist here.
    for results in (stateless, stateful):
        failed = [check for check in results["completion-complete"] if check["status"] == "FAILURE"]
        # (the invalid-params code itself is checked over raw HTTP in test_session_doors.py)
        assert failed and all("No prompt named 'test_prompt_with_arguments'" in check["errorMessage"] for check in failed), (
            results["completion-complete"]
        )
    # the stateless scenario fails only where it needs a fixture tool, as the baseline says
    baseline = yaml.safe_load(BASELINE.read_text())["server"]
    allowed = {entry.split(":", 1)[1] for entry in baseline if entry.startswith("server-stateless:")}
    failed = {check["id"] for check in stateless["server-stateless"] if check["status"] in ("FAILURE", "WARNING")}
    assert failed == allowed and len(stateless["server-stateless"]) > 20, stateless["server-stateless"]


TS_CLIENT = HERE / "ts_client.mjs"
TS_SDK = MODULES / "@modelcontextprotocol" / "sdk" / "package.json"
TOOL_ERRORS = {
    # what each call in ts_client.mjs does wrong, and the code the result's _meta carries
    "missing_file": ("bad_image", None),
    "outside_allowed": ("access_denied", None),
    "unknown_image_id": ("unknown_image", None),
    "bad_budget": ("invalid_request", "budget"),
    "wrong_type": ("invalid_request", "temperature"),
    "missing_argument": ("invalid_request", "labels"),
    "unknown_tool": ("invalid_request", None),
}


def test_a_typescript_sdk_client_calls_every_tool_and_reads_every_error(served, tiny_gemma4, tmp_path):
    """The SDK that the Inspector, Claude Code, VS Code and Cursor build on, over stdio and HTTP, with its
    output-schema checks on: every tool works, and every error reaches it as our sentence."""
    node = need(TS_SDK)
    server, images = served
    outside = tmp_path / "outside.png"
    sample_image(32, 32).save(outside)
    stdio = {
        "command": VLM_AGENT,
        "args": ["serve", "--model", str(tiny_gemma4), "--allow-dir", str(images)],
        "env": {**os.environ, "HF_HUB_OFFLINE": "1", "VLM_AGENT_HOME": str(tmp_path / "home")},
    }
    plan = {
        "stdio": stdio, "http": {"url": server.url}, "image": str(images / "photo.png"),
        "missing": str(images / "missing.png"), "outside": str(outside),
    }
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    run = subprocess.run([node, str(TS_CLIENT), str(tmp_path / "plan.json")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout)
    assert set(report) == {"stdio", "http"}
    for door, seen in report.items():
        assert {tool["name"]: tool["outputSchema"] for tool in seen["tools"]} == dict.fromkeys(TOOLS, True), door
        for name, called in seen["calls"].items():
            assert "ok" in called, (door, name, called)
            result = called["ok"]
            assert not result["isError"] and result["structured"], (door, name, result)
            pictured = name in ("detect", "compare_budgets")
            assert result["types"] == (["text", "image", "resource_link"] if pictured else ["text"]), (door, name)
            # clients that show their model only the text learn what was cut too
            notes = result["structured"].get("notes") or []
            assert all(f"note: {note}" in result["text"] for note in notes), (door, name, result["text"])
        assert seen["calls"]["describe"]["ok"]["structured"]["notes"], door  # cut at max_new_tokens: it has one
        assert seen["calls"]["ocr_rapidocr"]["ok"]["structured"]["engine"] == "rapidocr"
        assert seen["progress"]["describe"] > 0, door  # streamed text reaches the client
        for name, (code, param) in TOOL_ERRORS.items():
            answer = seen["errors"][name]
            assert "ok" in answer, (door, name, answer)  # a tool error, never a protocol error the SDK raised
            result = answer["ok"]
            assert result["isError"] and result["structured"] is None, (door, name, result)
            check_tool_error(result["text"])
            error = result["meta"]["vlm-agent/error"]
            assert (error["code"], error.get("param")) == (code, param), (door, name, error)
        missing = seen["errors"]["missing_file"]["ok"]["text"]
        assert missing.startswith("No image at '/") and missing.endswith("/missing.png'."), missing
        for name in ("unknown_prompt", "missing_prompt_argument", "unknown_resource"):
            thrown = seen["errors"][name].get("thrown")
            assert thrown and thrown["code"] == -32602, (door, name, seen["errors"][name])
            check_tool_error(thrown["message"].removeprefix(f"MCP error {thrown['code']}: "))
        assert "read_text" in seen["errors"]["unknown_prompt"]["thrown"]["message"]
        assert "'image'" in seen["errors"]["missing_prompt_argument"]["thrown"]["message"]
        assert seen["model"]["family"] == "gemma4"
        assert seen["picture"]["mimeType"] == "image/png" and seen["picture"]["bytes"] > 0
        assert "vlm-agent://model" in seen["resources"] and "vlm-agent://pictures/{name}" in seen["templates"]
        assert set(seen["prompts"]) == {"describe", "read_text", "find_objects", "compare_budgets"}
        assert "`detect`" in seen["prompt"][0]
        assert "280" in seen["completion"]


@pytest.mark.anyio
async def test_a_client_on_protocol_2026_07_28_gets_every_tool_statelessly(served):
    """Every tool, the model resource, a prompt, a picture link, an error and the log messages it asked for,
    for a client that pins the newest version: no session, and the log level in each request's _meta."""
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
        "extract": {"images": [photo], "fields": "animal, legs:integer", "max_new_tokens": 48, "verify": False},
    }
    sessions: list[str | None] = []
    logged: list[tuple[str, str]] = []

    async def remember(response) -> None:
        sessions.append(response.headers.get("mcp-session-id"))

    async def on_log(params) -> None:
        logged.append((params.level, str(params.data)))

    async with httpx2.AsyncClient(timeout=120, event_hooks={"response": [remember]}) as http:
        transport = streamable_http_client(server.url, http_client=http)
        async with Client(transport, mode="2026-07-28", log_level="warning", logging_callback=on_log) as client:
            assert client.protocol_version == "2026-07-28"
            listed = {tool.name for tool in (await client.list_tools()).tools}
            results = {name: await client.call_tool(name, arguments) for name, arguments in calls.items()}
            refused = await client.call_tool("ocr", {"image": str(images / "missing.png")})
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
    assert refused.is_error and refused.structured_content is None
    assert refused.meta["vlm-agent/error"] == {"code": "bad_image"}
    # the level asked for in _meta: the refusal (a warning) arrives, the info messages do not
    assert logged and all(level == "warning" for level, _ in logged), logged
    assert any("No image at" in message for _, message in logged), logged
    assert model["family"] == "gemma4"
    assert "`ocr`" in prompt.messages[0].content.text
    assert link.type == "resource_link"
    png = base64.b64decode(picture.contents[0].blob)
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size == (128, 96)
    # stateless: no response opened a session
    assert sessions and set(sessions) == {None}


def test_http_negotiates_stateless_or_a_session_by_protocol_version(served):
    """Raw HTTP: a 2026-07-28 request (server/discover) is answered without a session; a 2025-11-25
    client's initialize opens one, for clients that predate the stateless protocol."""
    import httpx

    server, _ = served
    accept = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    envelope = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    discover = httpx.post(
        server.url, headers={**accept, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "server/discover"},
        json={"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": envelope}}, timeout=30,
    )
    assert discover.status_code == 200 and "mcp-session-id" not in discover.headers
    found = discover.json()["result"]
    assert "2026-07-28" in found["supportedVersions"] and found["capabilities"]["tools"] is not None
    initialize = httpx.post(
        server.url, headers=accept, timeout=30,
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}},
    )
    assert initialize.status_code == 200 and initialize.headers["mcp-session-id"]
    # logging/setLevel is gone from 2026-07-28 (the level travels in each request's _meta)
    set_level = httpx.post(
        server.url, headers={**accept, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "logging/setLevel"},
        json={"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "info", "_meta": envelope}},
        timeout=30,
    )
    assert set_level.json()["error"]["code"] == -32601


NPX = re.compile(r"^npx -y -p node@22 -p @modelcontextprotocol/inspector@(\S+) mcp-inspector ")


def test_the_documented_inspector_commands_work_as_printed(setup_folder):
    """docs/mcp.md's Inspector lines, as printed; npx is swapped for the same Inspector installed here."""
    node = need(INSPECTOR / "package.json")
    launcher = MODULES / ".bin" / "mcp-inspector"
    installed = json.loads((INSPECTOR / "package.json").read_text())["version"]
    commands = documented("mcp-inspector")
    assert len(commands) == 4 and all(NPX.match(command) for command in commands), commands
    outputs = []
    for command in commands:
        assert NPX.match(command).group(1) == installed  # the docs pin the version the tests run
        local = NPX.sub(f"{node} {launcher} ", command)
        run = subprocess.run(["bash", "-c", local], cwd=setup_folder, env=environment(node, setup_folder),
                             capture_output=True, text=True, timeout=300)
        outputs.append((run.returncode, run.stdout, run.stderr))
    (listed, called, missing, prompts) = outputs
    for returncode, stdout, stderr in (listed, called, prompts):
        assert returncode == 0, (stdout[-2000:], stderr[-2000:])
    assert {tool["name"] for tool in json.loads(listed[1])["tools"]} == set(TOOLS)
    result = json.loads(called[1])
    assert result["structuredContent"]["task"] == "ocr" and not result.get("isError")
    # a tool error reaches the Inspector as the sentence, never as a schema failure (exit 5: a tool error)
    returncode, stdout, stderr = missing
    assert returncode == 5 and stdout.startswith("{"), (returncode, stdout, stderr[-2000:])
    error = json.loads(stdout)
    assert error["isError"] and "structuredContent" not in error, stdout
    text = error["content"][0]["text"]
    assert text.startswith("No image at '/") and text.endswith("/vlm-agent-demo/missing.png'."), text
    assert {prompt["name"] for prompt in json.loads(prompts[1])["prompts"]} == {
        "describe", "read_text", "find_objects", "compare_budgets"
    }

"""Load: many clients at once on one resident tiny model, over real streamable HTTP.

Every request carries its own image (so its own image_id) and, for detect, its own label:
a response that comes back to the wrong client, or not at all, is counted. Past the
queue bound, calls must be told "busy, retry" at once instead of piling up.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from mcp import Client
from PIL import Image

from tests.conftest import HTTP_TOKEN
from tests.hardening import check_tool_error, http_client, record
from tests.test_mcp import Gate, make_server
from tools.model import load_model
from tools.inputs import image_id

pytestmark = pytest.mark.anyio

CLIENTS = 16
CALLS = 25
TOOLS = ("describe", "ocr", "detect")
BUSY = "busy"


@dataclass(frozen=True)
class Request:
    tool: str
    arguments: dict[str, Any]
    image_id: str
    label: str | None

    def matches(self, result: dict[str, Any]) -> bool:
        """Whether a response is this request's own: its task, its image, its label."""
        labels_ok = self.label is None or result.get("labels") == [self.label]
        return result.get("task") == self.tool and result.get("image_ids") == [self.image_id] and labels_ok


def request(client: int, call: int, budget: int = 70, max_new_tokens: int = 1) -> Request:
    # A colour per (client, call): every request's image bytes, hence its image_id, differ.
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (client * 15, call * 10, 77)).save(buffer, "PNG")
    data = buffer.getvalue()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    tool = TOOLS[(client + call) % len(TOOLS)]
    label = f"thing {client}-{call}" if tool == "detect" else None
    common = {"budget": budget, "max_new_tokens": max_new_tokens}
    arguments: dict[str, Any] = {
        "describe": {"images": [uri], "prompt": f"request {client}-{call}", **common},
        "ocr": {"image": uri, **common},
        "detect": {"image": uri, "labels": [label], **common},
    }[tool]
    return Request(tool, arguments, image_id(data), label)


async def call(client: Client, req: Request, tally: Counter[str]) -> None:
    """One call, tallied as ok, busy (a clean refusal), error, mixed (someone else's answer) or lost."""
    try:
        result = await client.call_tool(req.tool, req.arguments)
    except Exception:  # no answer at all: the call's response is lost
        tally["lost"] += 1
        return
    if result.is_error:
        message = check_tool_error(result.content[0].text)
        tally[BUSY if "busy" in message and "retry" in message else "errors"] += 1
    elif req.matches(result.structured_content):
        tally["ok"] += 1
    else:
        tally["mixed"] += 1


async def test_16_clients_x_25_mixed_calls_over_http_then_a_burst_past_the_queue_bound(served: str) -> None:
    tally: Counter[str] = Counter()

    async def client_run(n: int) -> None:
        async with http_client(served, HTTP_TOKEN) as client:
            for k in range(CALLS):
                await call(client, request(n, k), tally)

    async with anyio.create_task_group() as group:
        for n in range(CLIENTS):
            group.start_soon(client_run, n)
    assert tally == Counter(ok=CLIENTS * CALLS), tally
    record(clients=CLIENTS, calls_each=CALLS, load_ok=tally["ok"], load_errors=tally["errors"],
           load_mixed=tally["mixed"], load_lost=tally["lost"])

    # Twice the queue bound at once, each call slow enough to hold the model while the rest arrive.
    burst: Counter[str] = Counter()
    ready = anyio.Event()

    async def burst_run(n: int) -> None:
        async with http_client(served, HTTP_TOKEN) as client:
            await ready.wait()
            await call(client, request(CLIENTS + n, n, budget=560, max_new_tokens=4), burst)

    async with anyio.create_task_group() as group:
        for n in range(32):
            group.start_soon(burst_run, n)
        await anyio.sleep(1.5)  # let every client finish its handshake
        ready.set()
    assert burst["ok"] >= 1 and burst[BUSY] >= 1, burst
    assert burst["ok"] + burst[BUSY] == 32, burst
    async with http_client(served, HTTP_TOKEN) as client:
        await call(client, request(0, 99), burst)
    assert burst["ok"] + burst[BUSY] == 33, burst
    record(busy=burst[BUSY])


async def test_the_queue_never_grows_past_its_bound(workdir, tiny_gemma4) -> None:
    """20 calls at once against a bound of 4: 16 told busy at once, 4 served, ``pending`` never above 4."""
    backend = load_model(str(tiny_gemma4))
    gate = Gate(backend)
    server = make_server(workdir, str(tiny_gemma4), backend, max_queue=4)
    resident = server.resident
    highest = 0
    results: list[Any] = []

    async with Client(server) as client:

        async def one() -> None:
            results.append(await client.call_tool("describe", {"images": [str(workdir / "images" / "square.png")],
                                                               "budget": 70, "max_new_tokens": 1}))

        async def watch() -> None:
            nonlocal highest
            while True:
                highest = max(highest, resident.pending)
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            for _ in range(20):
                group.start_soon(one)
            await anyio.to_thread.run_sync(gate.entered.wait, 30)
            with anyio.fail_after(30):
                while len(results) < 16:  # the busy ones are answered while the model is held
                    await anyio.sleep(0.01)
            gate.release.set()
            with anyio.fail_after(30):
                while len(results) < 20:
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()
    busy = [r for r in results if r.is_error]
    assert len(busy) == 16 and all("busy" in check_tool_error(r.content[0].text) for r in busy)
    assert highest == 4 and resident.pending == 0
    record(busy=len(busy))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from tests.conftest import sample_image

    root = tmp_path_factory.mktemp("load")
    (root / "images").mkdir()
    sample_image(512, 512).save(root / "images" / "square.png")
    return root

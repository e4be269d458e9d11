"""An answer streamed as progress notifications: the generating thread never waits for the event
loop, and what the client is sent adds up to the answer.

Before, each token's text was handed to the event loop and the generation waited there until it
had been sent: on a busy machine every decoding step waited for the loop thread to be scheduled.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import anyio

from mcp_server.progress import TextProgress
from tests.conftest import sample_image
from tests.raw import call, raw_stdio


class Client:
    """What ``ctx.report_progress`` reaches: the notifications, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, float | None, str | None]] = []

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        self.sent.append((progress, total, message))


def test_pieces_given_while_the_loop_is_not_running_are_kept_and_sent_in_order():
    client = Client()
    progress = TextProgress(client, 40)
    # From a worker thread, with no event loop running at all: a sink that waited for the loop would hang here.
    worker = threading.Thread(target=lambda: [progress(f"{n} ", n + 1) for n in range(30)])
    worker.start()
    worker.join(5)
    assert not worker.is_alive()

    async def ending() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(progress.run)
            progress(">", 31)
            progress.close()

    anyio.run(ending)
    assert "".join(message for _, _, message in client.sent) == "".join(f"{n} " for n in range(30)) + ">"
    assert client.sent[-1][:2] == (31, 40) and len(client.sent) <= 2


def test_a_client_gone_mid_answer_stops_the_notifications_not_the_call():
    class Gone(Client):
        async def report_progress(self, *args) -> None:
            raise anyio.BrokenResourceError

    progress = TextProgress(Gone(), 4)

    async def ending() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(progress.run)
            progress("a", 1)
            await progress.send()
            progress("b", 2)
            progress.close()

    anyio.run(ending)  # no error reaches the call


def test_the_streamed_text_adds_up_to_the_answer_through_the_server(tiny_gemma4: Path, tmp_path: Path):
    """A real `vlm-agent serve` in raw stdio: the progress messages of a describe, joined, are its text."""
    picture = tmp_path / "square.png"
    sample_image(96, 64).save(picture)
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")]
    with raw_stdio(args) as server:
        message = json.loads(call(1, "describe", {"images": [str(picture)], "max_new_tokens": 48}))
        message["params"]["_meta"] = {"progressToken": "p1"}
        server.send(json.dumps(message).encode())
        streamed: list[tuple[float, str]] = []
        while (got := server.read(120)).get("id") != 1:
            params = got.get("params") or {}
            if got.get("method") == "notifications/progress" and params.get("total") == 48:
                streamed.append((params["progress"], params["message"]))
        result = got["result"]["structuredContent"]
    assert streamed, "nothing was streamed"
    assert "".join(text for _, text in streamed) == result["text"]
    counts = [count for count, _ in streamed]
    assert counts == sorted(counts) and counts[-1] <= result["generated_tokens"]

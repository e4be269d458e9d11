"""Class 11 of the transport campaign: image work stays off the event loop, through raw stdio.

A real `vlm-agent serve` child with a module injected at its start (``tests/injected.py``)
that holds every Pillow operation at a gate the test opens. While one is held, a ping must
be answered: held on a worker thread, the event loop goes on serving; held on the event loop,
nothing is answered until the gate opens. No timing is measured: a ping either comes back
while the gate is still closed or the test fails after a generous bound.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

from tests.conftest import sample_image
from tests.hardening import record
from tests.injected import inject
from tests.raw import RawStdio, call, raw_stdio, rpc

#: failure bounds, not timing targets
PONG_BOUND_S = 30.0
CALL_BOUND_S = 180.0


def serve_args(model: Path, folder: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--allow-dir", str(folder), "--out-dir", str(out)]


class Answers:
    """Responses of a raw server by id, read as they come; notifications are skipped."""

    def __init__(self, server: RawStdio) -> None:
        self.server = server
        self.got: dict[object, dict] = {}

    def pump(self, timeout: float) -> None:
        message = self.server.poll(timeout)
        if message is not None and "id" in message and ("result" in message or "error" in message):
            self.got[message["id"]] = message

    def wait(self, id_: object, bound: float, why: str) -> dict:
        deadline = time.monotonic() + bound
        while id_ not in self.got:
            assert time.monotonic() < deadline, f"{why}; server log: {self.server.log()[-1500:]}"
            self.pump(0.05)
        return self.got.pop(id_)


def test_a_ping_is_answered_while_the_image_work_of_a_detect_is_held(tiny_gemma4, tmp_path):
    """Every Pillow operation of a detect, result picture included, is held in turn; each time a ping answers."""
    picture = tmp_path / "in.png"
    sample_image(64, 48).save(picture)
    out, talk = tmp_path / "out", tmp_path / "gates"
    with raw_stdio(serve_args(tiny_gemma4, tmp_path, out), env=inject(talk, "pil-gate")) as s:
        answers = Answers(s)
        s.send(call(1, "detect", {"image": str(picture), "labels": ["cat"], "max_new_tokens": 2, "budget": 70}))
        held, after_writing = 0, 0
        deadline = time.monotonic() + CALL_BOUND_S
        while 1 not in answers.got:
            assert time.monotonic() < deadline, f"no detect result; log: {s.log()[-1500:]}"
            hit = talk / f"hit-{held + 1}.json"
            if not hit.exists():
                answers.pump(0.01)
                continue
            held += 1
            what = json.loads(hit.read_text())
            # Image work after the annotated picture was written: the picture sent back to the client.
            after_writing += bool(list(out.glob("*.png")))
            s.send(rpc(10_000 + held, "ping"))
            where = "on the event loop" if what["on_loop"] else f"on thread {what['thread']}"
            pong = answers.wait(10_000 + held, PONG_BOUND_S, f"no pong while {what['what']} was held {where}")
            assert pong.get("result") == {}, pong
            (talk / f"open-{held}").write_text("")
        result = answers.got.pop(1)
    assert not result["result"].get("isError"), result
    assert result["result"]["content"][1]["type"] == "image"
    # The gates were met, the result picture's work among them (before the fix it ran on the event loop).
    assert held >= 3 and after_writing >= 1, (held, after_writing)
    record(class_11=1)


def png_uri(width: int = 64, height: int = 48) -> str:
    data = io.BytesIO()
    sample_image(width, height).save(data, "PNG")
    return "data:image/png;base64," + base64.b64encode(data.getvalue()).decode()


def test_no_image_work_runs_on_the_event_loop_in_any_tool(tiny_gemma4, tmp_path):
    """Every tool, every kind of image reference: Pillow, base64 and hashing calls are recorded with their thread."""
    picture = tmp_path / "in.png"
    sample_image(96, 64).save(picture)
    out, talk = tmp_path / "out", tmp_path / "record"
    history = [{"role": "user", "content": "look", "images": [png_uri(40, 30)]}, {"role": "assistant", "content": "ok"}]
    calls = [
        ("detect", {"image": str(picture), "labels": ["cat"], "max_new_tokens": 2, "budget": 70}),
        ("detect", {"image": png_uri(), "labels": ["cat"], "max_new_tokens": 2, "tiles": 2}),
        ("ocr", {"image": png_uri(), "max_new_tokens": 2, "budget": 70}),
        ("ocr", {"image": str(picture), "engine": "rapidocr", "tiles": 2}),
        ("describe", {"images": [png_uri(), str(picture)], "history": history, "max_new_tokens": 2, "budget": 70}),
        ("compare_budgets", {"image": str(picture), "task": "detect", "prompt": "cat", "budgets": [70, 140],
                             "max_new_tokens": 2}),
        ("chat", {"message": "what is this?", "images": [png_uri()], "max_new_tokens": 2, "budget": 70}),
    ]
    with raw_stdio(serve_args(tiny_gemma4, tmp_path, out), env=inject(talk, "pil-record")) as s:
        for n, (tool, arguments) in enumerate(calls, start=1):
            s.send(call(n, tool, arguments))
            answer = s.answer(n, timeout=CALL_BOUND_S)
            assert not answer["result"].get("isError"), (tool, answer)
            if tool == "compare_budgets":
                link = next(c for c in answer["result"]["content"] if c["type"] == "resource_link")
                s.send(rpc(100 + n, "resources/read", {"uri": link["uri"]}))
                assert "result" in s.answer(100 + n), "the full-size picture could not be read"
    recorded = [json.loads(line) for line in (talk / "calls.jsonl").read_text().splitlines()]
    on_loop = sorted({r["what"] for r in recorded if r["on_loop"]})
    assert not on_loop, f"image work on the event loop: {on_loop}"
    # The recorder saw the work, on worker threads: decoding, scaling, encoding, hashing.
    seen = {r["what"] for r in recorded}
    assert {"Image.open", "Image.save", "ImageDraw.Draw"} <= seen and any("hashlib" in w for w in seen), seen
    record(class_11=1)

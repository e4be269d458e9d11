"""Classes 14 and 15 of the transport campaign, through hand-made HTTP against a real
`vlm-agent serve --transport http`: what a session made stays its own, and completion answers
stay small and only for what exists.

Class 14: session B names session A's image id (as an image and in history), completes A's
image ids, labels and picture names, and reads A's picture: each is "not found", worded like a
name nobody made; A still has all of them. Class 15: a completion value of megabytes gets a
one-line error, not a reply a hundred times its size, and a ping right after is answered; a
completion for a prompt, template or argument that does not exist is an error, not values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import sample_image
from tests.hardening import check_tool_error, record, serve_http
from tests.raw import RawSession

PICTURES = "vlm-agent://pictures/{name}"
LABELS = [f"thing{n:02d}" for n in range(20)]


@pytest.fixture(scope="module")
def session_server(tiny_gemma4, tmp_path_factory) -> tuple[int, str]:
    """One server for the module: its port, and an image in its allowed folder."""
    root = tmp_path_factory.mktemp("sessions")
    sample_image(64, 48).save(root / "a.png")
    args = ["--model", str(tiny_gemma4), "--allow-dir", str(root), "--out-dir", str(root / "out")]
    with serve_http(args) as server:
        yield int(server.url.rsplit(":", 1)[1].split("/")[0]), str(root / "a.png")


@pytest.fixture(scope="module")
def port(session_server) -> int:
    return session_server[0]


@pytest.fixture(scope="module")
def image(session_server) -> str:
    return session_server[1]


def complete(session: RawSession, ref: dict, name: str, value: str) -> dict:
    return session.request("completion/complete", {"ref": ref, "argument": {"name": name, "value": value}})


def values(session: RawSession, ref: dict, name: str, value: str) -> list[str]:
    answer = complete(session, ref, name, value)
    assert "result" in answer, answer
    return answer["result"]["completion"]["values"]


def find(prompt: str = "find_objects") -> dict:
    return {"type": "ref/prompt", "name": prompt}


def read(session: RawSession, name: str) -> dict:
    return session.request("resources/read", {"uri": PICTURES.format(name=name)})


def test_a_session_sees_nothing_another_session_made(port, image):
    a, b = RawSession(port).open(), RawSession(port).open()
    made = a.call("detect", {"image": image, "labels": ["zebra", "yak"], "max_new_tokens": 2, "budget": 70})
    assert not made.get("isError"), made
    image_id = made["structuredContent"]["image_ids"][0]
    picture = Path(made["structuredContent"]["annotated_path"]).name
    pictures = {"type": "ref/resource", "uri": PICTURES}
    # A has what it made.
    assert values(a, find(), "image", "img_") == [image_id]
    assert values(a, find(), "labels", "") == ["yak", "zebra"]
    assert values(a, pictures, "name", "") == [picture]
    assert "result" in read(a, picture)
    assert not a.call("describe", {"images": [image_id], "max_new_tokens": 2, "budget": 70}).get("isError")
    # B gets what it would for names nobody made.
    assert values(b, find(), "image", "img_") == []
    assert values(b, find(), "labels", "") == []
    assert values(b, pictures, "name", "") == []
    never = "img_0123456789abcdef"
    unknown = b.call("describe", {"images": [never], "max_new_tokens": 2})
    for arguments in ({"images": [image_id]},
                      {"images": [image], "history": [{"role": "user", "content": "hi", "images": [image_id]}]}):
        refused = b.call("describe", {**arguments, "max_new_tokens": 2, "budget": 70})
        assert refused.get("isError") and "structuredContent" not in refused and refused["_meta"]["vlm-agent/error"] == {"code": "unknown_image"}, refused
        message = check_tool_error(refused["content"][0]["text"])
        assert message == unknown["content"][0]["text"].replace(never, image_id), message
    nobody = read(b, "detect-0123456789ab.png")
    answer = read(b, picture)
    assert "result" not in answer, answer
    assert answer["error"]["message"] == nobody["error"]["message"].replace("detect-0123456789ab.png", picture)
    # B sending the image's bytes itself makes the id its own too.
    assert not b.call("describe", {"images": [image], "max_new_tokens": 2, "budget": 70}).get("isError")
    assert values(b, find(), "image", "img_") == [image_id]
    record(class_14=1, http_refused=3)


def test_a_megabyte_completion_value_gets_a_short_error_and_pings_are_answered(port, image):
    """After 20 labels are remembered, a 2 MB labels value: before, a reply of about 40 MB."""
    s = RawSession(port).open()
    assert not s.call("detect", {"image": image, "labels": LABELS, "max_new_tokens": 2, "budget": 70}).get("isError")
    assert len(values(s, find(), "labels", "thing")) == 20
    huge = "thing," * (2 * 1024 * 1024 // 6)
    answer, size = s.exchange("completion/complete", {"ref": find(), "argument": {"name": "labels", "value": huge}})
    assert size < 4096, size
    assert "result" not in answer and answer["error"]["code"] == -32602, answer
    check_tool_error(answer["error"]["message"])
    assert s.request("ping") == {"jsonrpc": "2.0", "id": s.n, "result": {}}
    # Under the limit, the reply is bounded in count and in bytes however many labels match.
    longest = ", ".join(["x" * 90] * 40)
    answer, size = s.exchange("completion/complete", {"ref": find(), "argument": {"name": "labels", "value": longest + ", thing"}})
    completion = answer["result"]["completion"]
    assert 0 < len(completion["values"]) <= 20 and size < 256 * 1024, size
    record(class_15=1, http_refused=1)


@pytest.mark.parametrize(
    ("ref", "argument"),
    [
        ({"type": "ref/prompt", "name": "no_such_prompt"}, "image"),
        ({"type": "ref/prompt", "name": "describe"}, "labels"),
        ({"type": "ref/prompt", "name": "read_text"}, "no_such_argument"),
        ({"type": "ref/resource", "uri": "vlm-agent://elsewhere/{name}"}, "name"),
        ({"type": "ref/resource", "uri": PICTURES}, "image"),
    ],
    ids=["unknown prompt", "argument of another prompt", "unknown argument", "unknown template", "template argument"],
)
def test_a_completion_for_what_does_not_exist_is_an_error(port, ref, argument):
    s = RawSession(port).open()
    answer = complete(s, ref, argument, "")
    assert "result" not in answer and answer["error"]["code"] == -32602, answer
    message = check_tool_error(answer["error"]["message"])
    assert json.dumps(ref.get("name") or ref.get("uri"))[1:-1] in message or argument in message, message
    record(class_15=1, http_refused=1)

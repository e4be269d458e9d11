"""Class 1 of the transport campaign: every stdio line gets an answer, whatever its bytes.

Raw bytes on a real `vlm-agent serve` process's stdin: no client library to clean them up.
"""

from __future__ import annotations

import json

import pytest

from tests.corpus.wire import CASES, WireCase
from tests.hardening import check_tool_error, record
from tests.raw import RawStdio, raw_stdio, rpc


@pytest.fixture(scope="module")
def stdio(tmp_path_factory) -> RawStdio:
    folder = tmp_path_factory.mktemp("wire")
    with raw_stdio(["--model", "none", "--allow-dir", str(folder), "--out-dir", str(folder / "out")]) as server:
        yield server


def assert_refused(answer: dict, case_id) -> None:
    assert answer.get("id", "missing") == case_id, answer
    error = answer["error"]
    assert error["code"] in (-32700, -32600, -32602), answer
    check_tool_error(error["message"])


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_line_gets_an_answer_and_the_server_keeps_serving(stdio: RawStdio, case: WireCase) -> None:
    logged = len(stdio.log())
    stdio.send(case.line)
    assert_refused(stdio.read(timeout=30), case.id)
    assert "refused a stdio message" in stdio.log()[logged:]
    stdio.send(rpc(1, "ping"))
    assert stdio.answer(1) == {"jsonrpc": "2.0", "id": 1, "result": {}}
    record(wire_refused=1, class_1=1)


def test_a_line_past_the_message_cap_is_refused_without_reading_it_all_into_memory(stdio: RawStdio) -> None:
    from mcp_server.wire import MAX_MESSAGE_BYTES

    stdio.send(b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"x":"' + b"a" * MAX_MESSAGE_BYTES + b'"}}')
    answer = stdio.read(timeout=60)
    assert answer["id"] is None and answer["error"]["code"] == -32600, answer
    assert "MiB" in answer["error"]["message"]
    stdio.send(rpc(2, "ping"))
    assert stdio.answer(2)["result"] == {}
    record(wire_refused=1, class_1=1)


def test_well_formed_odd_messages_still_work(stdio: RawStdio) -> None:
    """The guard refuses only what it must: string ids, unicode escapes, pairs and a CRLF ending pass."""
    stdio.send(b'{"jsonrpc":"2.0","id":"a-\\u00e9-\\ud83d\\ude00","method":"ping"}\r\n')
    assert stdio.answer("a-\u00e9-\U0001f600")["result"] == {}
    stdio.send(json.dumps({"jsonrpc": "2.0", "id": 2**62, "method": "ping"}).encode())
    assert stdio.answer(2**62)["result"] == {}

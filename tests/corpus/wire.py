"""The wire corpus: raw messages that break the protocol itself, before any tool runs.

Each case is one line of bytes for the stdio transport (and one body for HTTP). The server
must answer every one with a JSON-RPC error, log it, and keep serving. ``id`` says which
id the error must carry: the sent one where it is a usable id, else None (JSON null).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: ids the cases that keep a usable id send; each case's own, so answers never mix up
CASE_ID = 9000


@dataclass(frozen=True)
class WireCase:
    name: str
    line: bytes
    #: the id the error must carry
    id: Any = None


def _call(arguments: str, tool: str = "describe", id_: str = str(CASE_ID)) -> bytes:
    return (
        '{"jsonrpc":"2.0","id":' + id_ + ',"method":"tools/call","params":{"name":"' + tool
        + '","arguments":' + arguments + "}}"
    ).encode()


SURROGATE = r"\ud800"
IMG = '"images":["x.png"]'

CASES: list[WireCase] = [
    # lone surrogate escapes, in every kind of string a request carries
    WireCase("surrogate in the prompt", _call('{' + IMG + ',"prompt":"a' + SURROGATE + 'b"}'), CASE_ID),
    WireCase("surrogate in a path", _call('{"images":["' + SURROGATE + '.png"]}'), CASE_ID),
    WireCase("surrogate in a label", _call('{"image":"x.png","labels":["' + SURROGATE + '"]}', "detect"), CASE_ID),
    WireCase(
        "surrogate in history", _call('{' + IMG + ',"history":[{"role":"user","content":"' + SURROGATE + '"}]}'),
        CASE_ID,
    ),
    WireCase("surrogate in a role", _call('{' + IMG + ',"history":[{"role":"' + SURROGATE + '","content":""}]}'), CASE_ID),
    WireCase("surrogate in the tool name", _call("{}", "desc" + SURROGATE), CASE_ID),
    WireCase("low surrogate alone in a key", _call('{"\\udfff":1}'), CASE_ID),
    WireCase("surrogate in the method", b'{"jsonrpc":"2.0","id":9000,"method":"ping\\ud800"}', CASE_ID),
    WireCase("surrogate in a string id", b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}'),
    # not JSON
    WireCase("malformed JSON with an id", b'{"jsonrpc":"2.0","id":9000,"method":"ping",'),
    WireCase("a bare word", b"hello"),
    WireCase("invalid UTF-8 byte in a string", b'{"jsonrpc":"2.0","id":9000,"method":"ping","params":{"x":"\xff"}}'),
    WireCase("overlong UTF-8 slash", b'{"jsonrpc":"2.0","id":9000,"method":"ping","params":{"x":"\xc0\xaf"}}'),
    WireCase("a NUL byte outside strings", b'{"jsonrpc":"2.0",\x00"id":9000,"method":"ping"}'),
    WireCase("a byte-order mark first", b'\xef\xbb\xbf{"jsonrpc":"2.0","id":9000,"method":"ping"}'),
    WireCase("NaN temperature", _call('{' + IMG + ',"temperature":NaN}')),
    WireCase("Infinity max_new_tokens", _call('{' + IMG + ',"max_new_tokens":-Infinity}')),
    WireCase("5000-digit integer", _call('{' + IMG + ',"max_new_tokens":' + "9" * 5000 + "}")),
    WireCase("100,000-deep arrays", b"[" * 100_000 + b"]" * 100_000),
    WireCase("100,000-deep objects in params", _call('{"a":' * 100_000 + "1" + "}" * 100_000)),
    WireCase("65-deep arrays in an argument", _call('{' + IMG + ',"prompt":' + "[" * 65 + "]" * 65 + "}"), CASE_ID),
    # valid JSON, not a message we take
    WireCase("a batch", b'[{"jsonrpc":"2.0","id":9000,"method":"ping"}]'),
    WireCase("an empty batch", b"[]"),
    WireCase("a bare string", b'"ping"'),
    WireCase("a bare number", b"42"),
    WireCase("null", b"null"),
    WireCase("id 1.5", b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}'),
    WireCase("id true", b'{"jsonrpc":"2.0","id":true,"method":"ping"}'),
    WireCase("id {}", b'{"jsonrpc":"2.0","id":{},"method":"ping"}'),
    WireCase("id []", b'{"jsonrpc":"2.0","id":[],"method":"ping"}'),
    WireCase("id null", b'{"jsonrpc":"2.0","id":null,"method":"ping"}'),
    WireCase("id 1e400", b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}'),
    WireCase("id of 5000 digits", b'{"jsonrpc":"2.0","id":' + b"7" * 5000 + b',"method":"ping"}'),
    WireCase("id past 64 bits", b'{"jsonrpc":"2.0","id":' + b"9" * 30 + b',"method":"ping"}'),
    WireCase("no jsonrpc member", b'{"id":9000,"method":"ping"}', CASE_ID),
    WireCase("jsonrpc 1.0", b'{"jsonrpc":"1.0","id":9000,"method":"ping"}', CASE_ID),
    WireCase("method not a string", b'{"jsonrpc":"2.0","id":9000,"method":5}', CASE_ID),
    WireCase("params a list", b'{"jsonrpc":"2.0","id":9000,"method":"ping","params":[1]}', CASE_ID),
    WireCase("neither method nor result", b'{"jsonrpc":"2.0","id":9000}', CASE_ID),
]

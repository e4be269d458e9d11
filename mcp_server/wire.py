"""What a raw JSON-RPC message must be before the MCP layer sees it, on every transport.

The SDK's parser drops what it cannot take without an answer (on stdio the client then
waits forever) and turns a request whose id is not a string or an integer into a
notification. ``check_message`` judges one message's bytes and returns either the parsed
message or the JSON-RPC error to send back, with the request's id when it can be trusted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from pydantic import ValidationError

MiB = 1024 * 1024
#: one message: two images at the 20 MiB limit as data URIs, with room for the rest
MAX_MESSAGE_BYTES = 64 * MiB
#: nesting of arrays and objects; MCP messages need a handful of levels
MAX_DEPTH = 64

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Refusal:
    """A JSON-RPC error for a message the server cannot take."""

    code: int
    message: str
    id: str | int | None = None

    def response(self) -> types.JSONRPCError:
        return types.JSONRPCError(
            jsonrpc="2.0", id=self.id, error=types.ErrorData(code=self.code, message=self.message)
        )


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _depth_and_surrogates(value: Any) -> tuple[int, bool]:
    """The nesting depth of ``value`` and whether any string in it (keys too) holds a lone surrogate."""
    deepest, bad = 0, False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            bad = bad or _SURROGATE_RE.search(item) is not None
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            for key, sub in item.items():
                bad = bad or _SURROGATE_RE.search(key) is not None
                stack.append((sub, depth + 1))
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((sub, depth + 1) for sub in item)
        if deepest > MAX_DEPTH:
            break
    return deepest, bad


def _usable_id(raw: Any) -> str | int | None:
    """The request's id when it is one JSON-RPC allows here (a string or an integer), else None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int) and -(2**63) <= raw < 2**63:
        return raw
    if isinstance(raw, str) and len(raw) <= 200 and not _SURROGATE_RE.search(raw):
        return raw
    return None


def check_message(data: bytes | str) -> types.JSONRPCMessage | Refusal:
    """The message in ``data`` (one line of stdio, one HTTP body), or why it is refused."""
    if len(data) > MAX_MESSAGE_BYTES:
        return Refusal(
            types.INVALID_REQUEST,
            f"The message is larger than {MAX_MESSAGE_BYTES // MiB} MiB; send images as paths, URLs or image_ids.",
        )
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        return Refusal(types.PARSE_ERROR, "The message is not valid UTF-8.")
    try:
        # NaN and Infinity are not JSON; 5000-digit numbers raise ValueError; deep nesting RecursionError.
        parsed = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        return Refusal(types.PARSE_ERROR, f"The message nests deeper than {MAX_DEPTH} levels.")
    except ValueError:
        return Refusal(types.PARSE_ERROR, "The message is not valid JSON.")
    if isinstance(parsed, list):
        return Refusal(types.INVALID_REQUEST, "Batches are not supported; send one JSON-RPC message at a time.")
    if not isinstance(parsed, dict):
        return Refusal(types.INVALID_REQUEST, "The message must be a JSON-RPC object.")
    has_id = "id" in parsed
    request_id = _usable_id(parsed.get("id"))
    # A null id is allowed only on an error response; the SDK would read other odd ids as notifications.
    if has_id and request_id is None and "error" not in parsed:
        return Refusal(types.INVALID_REQUEST, "The message's id must be a string or an integer.")
    depth, surrogates = _depth_and_surrogates(parsed)
    if depth > MAX_DEPTH:
        return Refusal(types.INVALID_REQUEST, f"The message nests deeper than {MAX_DEPTH} levels.", request_id)
    if surrogates:
        return Refusal(
            types.INVALID_PARAMS,
            "The message holds text that is not valid Unicode (a lone surrogate escape); send UTF-8 text.",
            request_id,
        )
    try:
        return types.jsonrpc_message_adapter.validate_python(parsed, by_name=False)
    except ValidationError:
        return Refusal(
            types.INVALID_REQUEST, "The message is not a valid JSON-RPC request, notification or response.", request_id
        )

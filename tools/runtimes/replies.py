"""An engine's answers, read within bounds: server-sent events and JSON bodies as data.

An engine is another program, and its answers may be anything: an endless stream, a body of
hundreds of megabytes, a web page, events that are not the API's. What is read here is capped
in bytes and in tokens, checked against the API's shapes, and refused in one sentence
otherwise; ``Connection`` lets another thread hang up on a request at once.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import Cancelled, EngineError, VlmError
from ..options import MAX_NEW_TOKENS_LIMIT
from ..toolcalls import ToolCall
from .streaming import current_sink

#: longest engine message quoted in an error
DETAIL_CHARS = 200
#: the most of one answer read, a JSON body or a stream's events together: 8192 tokens with their
#: event framing take a few megabytes, so past this the engine is not answering a chat completion
MAX_ANSWER_BYTES = 16 * 2**20
#: the most of an error body read: only its first DETAIL_CHARS are ever shown
MAX_ERROR_BYTES = 64 * 2**10
#: the most of the model list (/models) read
MAX_LIST_BYTES = 2**20
#: events an engine may still send once it has sent the tokens asked for (finish reason, usage, [DONE])
TRAILING_EVENTS = 16
#: more prompt tokens than any model's context: a usage report past it is not a count
MAX_PROMPT_TOKENS = 10_000_000
#: what ends a line of a server-sent event stream
_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass
class Reply:
    """One chat completion, assembled from its stream."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    #: calls the engine sent that could not be read, one reason each
    invalid: list[str] = field(default_factory=list)
    #: stop, length, tool_calls, or None when the engine did not say
    finish_reason: str | None = None
    #: None when the engine reported no usage
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    #: the engine sent more than the tokens asked for, and the rest was not read
    cut: bool = False

    def message(self) -> dict[str, Any]:
        """This reply as an assistant message, to send back with the next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
                for call in self.tool_calls
            ]
        return message


def one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_detail(body: bytes | str) -> str:
    """The engine's own explanation, from the error shapes engines use."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    candidates: list[Any] = []
    if isinstance(data, dict):
        error = data.get("error")
        candidates += [error.get("message") if isinstance(error, dict) else error, data.get("detail"), data.get("message")]
    for found in candidates:
        if isinstance(found, list) and found and isinstance(found[0], dict):
            found = found[0].get("msg")  # FastAPI validation errors
        if isinstance(found, str) and found.strip():
            return found
    return json.dumps(data)[:DETAIL_CHARS]


def malformed(data: str) -> EngineError:
    return EngineError(f"The engine sent a malformed stream event ({one_line(data, 60)}).")


def token_count(value: Any, name: str, most: int) -> int | None:
    """A usage count the engine reported, refused unless it is a whole number a generation can have."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        shown = one_line(json.dumps(value), 40)
        raise EngineError(f"The engine reported a token usage that cannot be right ({name} {shown}); check its log.")
    return value


def choice_delta(choice: dict[str, Any], data: str) -> tuple[str, list[dict[str, Any]], str | None, bool]:
    """A choice's text, tool-call fragments and finish reason, refused unless they have the API's
    types; and whether it carries a token (text, a call fragment or reasoning)."""
    delta = choice.get("delta") or choice.get("message") or {}
    if not isinstance(delta, dict):
        raise malformed(data)
    piece, parts, finish = delta.get("content") or "", delta.get("tool_calls") or [], choice.get("finish_reason")
    if not (isinstance(piece, str) and isinstance(parts, list) and isinstance(finish, (str, type(None)))):
        raise malformed(data)
    for part in parts:
        if not (isinstance(part, dict) and isinstance(part.get("index", 0), int)
                and isinstance(part.get("function") or {}, dict)):
            raise malformed(data)
    return piece, parts, finish, bool(piece or parts or delta.get("reasoning_content"))


def read_stream(
    lines: Iterable[str],
    on_text: Callable[[str], None] | None = None,
    *,
    max_tokens: int | None = None,
    stop: threading.Event | None = None,
) -> Reply:
    """A reply from server-sent ``data:`` events; text is handed to ``on_text`` as it arrives.

    Tool calls come in pieces keyed by index (name first, arguments in fragments), and the
    usage in a last chunk with no choices. Some engines end with ``data: [DONE]``, some just close.
    At most ``max_tokens`` events carrying text or call fragments are taken (an engine sends about
    one per token): an engine that goes on past them is cut off there (``Reply.cut``). ``stop``
    set, reading ends with ``Cancelled`` at the next event.
    """
    text: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    reply = Reply(text="")
    pieces = trailing = 0
    answered = False
    for line in lines:
        if stop is not None and stop.is_set():
            raise Cancelled("The request was cancelled before it finished; send it again if it is still wanted.")
        if not line.startswith("data:"):
            continue  # blank separators, ": keep-alive" comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            # transformers serve writes its error events unescaped, so they may not parse.
            if '"error"' in data:
                raise EngineError(f"The engine failed while answering: {one_line(data)}") from None
            raise malformed(data) from None
        if not isinstance(chunk, dict):
            raise malformed(data)
        if "error" in chunk:
            raise EngineError(f"The engine failed while answering: {one_line(error_detail(data))}")
        choices = chunk.get("choices") or []
        usage = chunk.get("usage")
        if not isinstance(choices, list) or not isinstance(usage, (dict, type(None))):
            raise malformed(data)
        if isinstance(usage, dict):
            reply.prompt_tokens = token_count(usage.get("prompt_tokens"), "prompt_tokens", MAX_PROMPT_TOKENS)
            reply.generated_tokens = token_count(
                usage.get("completion_tokens"), "completion_tokens", max_tokens or MAX_NEW_TOKENS_LIMIT
            )
        carried = False
        for choice in choices:
            if not isinstance(choice, dict):
                raise malformed(data)
            if choice.get("index", 0) != 0:
                continue
            answered = True
            piece, parts, finish, token = choice_delta(choice, data)
            if token:
                if max_tokens is not None and pieces >= max_tokens:
                    reply.cut = True
                    break
                pieces += 1
                carried = True
            if piece:
                text.append(piece)
                if on_text is not None:
                    on_text(piece)
            for part in parts:
                slot = calls.setdefault(part.get("index", len(calls)), {"id": "", "name": "", "arguments": ""})
                function = part.get("function") or {}
                slot["id"] = str(part.get("id") or slot["id"])
                slot["name"] = slot["name"] or str(function.get("name") or "")
                slot["arguments"] += str(function.get("arguments") or "")
            reply.finish_reason = finish or reply.finish_reason
        if not (reply.cut or carried) and max_tokens is not None and pieces >= max_tokens:
            trailing += 1
            reply.cut = trailing > TRAILING_EVENTS
        if reply.cut:
            reply.finish_reason = "length"
            break
    if not answered:
        raise EngineError("The engine ended its answer without a completion; check its log.")
    reply.text = "".join(text)
    for index in sorted(calls):
        call = calls[index]
        try:
            arguments = json.loads(call["arguments"] or "{}")
        except json.JSONDecodeError:
            reply.invalid.append(f"unreadable arguments for {call['name']}")
            continue
        if isinstance(arguments, dict):
            reply.tool_calls.append(ToolCall(call["name"], arguments, id=call["id"] or None))
        else:
            reply.invalid.append(f"arguments for {call['name']} are not an object")
    return reply


def event_lines(chunks: Iterable[bytes], cap: int, too_large: Callable[[], VlmError]) -> Iterator[str]:
    """The lines of a server-sent event stream, read ``cap`` bytes at most: past it, ``too_large()``.

    Split here rather than by httpx, whose ``iter_lines`` holds a line whole however long it grows."""
    total = 0
    pending: list[bytes] = []
    for chunk in chunks:
        total += len(chunk)
        if total > cap:
            raise too_large()
        parts = _EOL.split(chunk)
        pending.append(parts[0])
        if len(parts) == 1:
            continue
        yield b"".join(pending).decode("utf-8", "replace")
        for part in parts[1:-1]:
            yield part.decode("utf-8", "replace")
        pending = [parts[-1]]
    rest = b"".join(pending)
    if rest:
        yield rest.decode("utf-8", "replace")


def read_upto(chunks: Iterable[bytes], cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of a body, and whether there was more (which is then left unread)."""
    kept: list[bytes] = []
    total = 0
    for chunk in chunks:
        kept.append(chunk)
        total += len(chunk)
        if total > cap:
            return b"".join(kept)[:cap], True
    return b"".join(kept), False


class Connection:
    """The sockets one request to the engine opened, to hang up on it from another thread.

    Shutting a socket down wakes a read blocked on it, and the engine sees the hang-up at once
    (vLLM then aborts the request and frees its batch slot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                self._sockets.append(sock)
                closed = self._closed
            if closed:
                shut_down(sock)

    def hang_up(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            shut_down(sock)


def shut_down(sock: socket.socket) -> None:
    try:
        # The base-class call: SSLSocket.shutdown would tear down its SSL object under the reading thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def stream_pieces() -> Callable[[str], None] | None:
    """The caller's stream sink (tools.runtimes.streaming), fed piece by piece; the engine sends no token ids."""
    sink = current_sink()
    if sink is None:
        return None
    count = 0

    def on_text(piece: str) -> None:
        nonlocal count
        count += 1  # one streamed chunk is about one token on vLLM and transformers serve
        sink(piece, count)

    return on_text


def uncompressed(response: httpx.Response) -> bool:
    """Whether the body comes as sent (identity was asked for): only then is a cap on the bytes read a cap on
    what they expand to."""
    return response.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")


def stopped(stop: threading.Event | None) -> None:
    """Raise ``Cancelled`` when the call was cancelled: whatever broke then, the hang-up did it."""
    if stop is not None and stop.is_set():
        raise Cancelled("The request was cancelled before it finished; send it again if it is still wanted.")

"""Streaming generated text to whoever asked for it, without threading a callback through every layer.

A caller (the MCP server, the CLI) opens ``streaming(sink)`` around a core call; the
backend that generates finds the sink in a context variable and feeds it text as tokens
are decoded. Context variables follow the call into the worker thread that runs it
(anyio copies the context), and two concurrent requests never see each other's sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

#: ``sink(delta, tokens_so_far)``
TextSink = Callable[[str, int], None]

_sink: ContextVar[TextSink | None] = ContextVar("vlm_agent_text_sink", default=None)


@contextmanager
def streaming(sink: TextSink | None) -> Iterator[None]:
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)


def current_sink() -> TextSink | None:
    return _sink.get()


class DeltaStreamer:
    """A transformers streamer that hands each newly decoded piece of text to a sink.

    Decodes everything generated so far on each step and sends the new suffix, holding
    back while the tail is an incomplete multi-byte character.
    """

    def __init__(self, decode: Callable[[list[int]], str], sink: TextSink, skip_prompt: bool = True) -> None:
        self.decode = decode
        self.sink = sink
        self.skip_prompt = skip_prompt
        self.ids: list[int] = []
        self.sent = ""

    def put(self, value: Any) -> None:
        if self.skip_prompt:
            self.skip_prompt = False  # generate() first hands over the prompt
            return
        self.ids.extend(int(v) for v in value.reshape(-1).tolist())
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        delta, self.sent = text[len(self.sent):], text
        if delta:
            self.sink(delta, len(self.ids))

    def end(self) -> None:
        text = self.decode(self.ids)
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.sink(text[len(self.sent):], len(self.ids))
            self.sent = text

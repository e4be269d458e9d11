"""Streaming generated text to whoever asked for it, without threading a callback through every layer.

A caller (the MCP server, the CLI) opens ``streaming(sink)`` around a core call; the
backend that generates finds the sink in a context variable and feeds it text as tokens
are decoded (through transformers' own ``TextStreamer``, which holds text back until a
word or character is complete). Context variables follow the call into the worker thread that runs it
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


def text_streamer(processor: Any, sink: TextSink) -> Any:
    """A transformers ``TextStreamer`` that hands finished pieces of text (whole words, whole
    characters) to ``sink`` with the count of tokens generated so far."""
    from transformers import TextStreamer

    class SinkStreamer(TextStreamer):
        tokens = 0

        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                self.tokens += int(value.numel())
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                sink(text, self.tokens)

    # skip_prompt also skips an encoder-decoder's decoder start token, which comes first.
    return SinkStreamer(processor, skip_prompt=True, skip_special_tokens=True)

"""Streaming generated text to whoever asked for it, without threading a callback through every layer.

A caller (the MCP server, the CLI) opens ``streaming(sink)`` around a core call; the
backend that generates finds the sink in a context variable and feeds it text as tokens
are decoded (``IncrementalText`` holds text back until no later token can change it).
Context variables follow the call into the worker thread that runs it (anyio copies the
context), and two concurrent requests never see each other's sink.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from weakref import WeakKeyDictionary

from ..text import clean_model_text

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


def answer_text(decoded: str) -> str:
    """The answer as results carry it: the decoded text without surrounding whitespace."""
    # Cleaned here too, so the streamed pieces add up to the text the result carries.
    return clean_model_text(decoded).strip()


#: SentencePiece's byte-fallback pieces; transformers' tokenizers decode a run of them together
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
#: per tokenizer, whether each token id seen so far leaves a run of byte pieces open
_JOINS: WeakKeyDictionary[Any, dict[int, bool]] = WeakKeyDictionary()


def settled(decoded: str) -> str:
    """The part of a partial decode that more tokens cannot change.

    A trailing U+FFFD may still become a character when the rest of its bytes arrive, and
    trailing whitespace waits because the answer is stripped at the end and tokenizers that
    tidy spaces drop a space before punctuation once the punctuation comes.
    """
    return clean_model_text(decoded).lstrip().rstrip().rstrip("\ufffd").rstrip()


class IncrementalText:
    """Token ids in, text deltas out, such that the deltas add up to ``answer_text`` of the
    whole decode, whatever the tokens are.

    A run of byte-fallback pieces is decoded as one group and turns wholly into U+FFFD when
    it is not valid UTF-8, so a later byte can change what earlier bytes decoded to: text is
    only taken from the tokens before the trailing run. ``joins_run(token)`` says whether a
    token leaves the run open: a byte piece, or a special token the decode skips.
    """

    def __init__(self, decode: Callable[[list[int]], str], joins_run: Callable[[int], bool]) -> None:
        self.decode = decode
        self.joins_run = joins_run
        self.ids: list[int] = []
        self.open_run = 0  # where the trailing run of byte pieces starts
        self.decoded = 0  # how many tokens the last decode took: the same ones give the same text
        self.sent = ""

    def push(self, ids: list[int]) -> str:
        for token in ids:
            self.ids.append(token)
            if not self.joins_run(token):
                self.open_run = len(self.ids)
        if self.open_run == self.decoded:
            # A token that only lengthens the open run: the text before the run, already sent, stands.
            return ""
        self.decoded = self.open_run
        return self._advance(settled(self.decode(self.ids[: self.open_run])))

    def finish(self) -> str:
        return self._advance(answer_text(self.decode(self.ids)))

    def _advance(self, text: str) -> str:
        # A decode that no longer extends what was sent cannot be taken back; the final
        # text still reaches the caller in the result.
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def run_joiner(processor: Any) -> Callable[[int], bool]:
    """``IncrementalText``'s ``joins_run`` for a processor's or tokenizer's decode."""
    tokenizer = getattr(processor, "tokenizer", processor)
    # A property of the token alone, asked for every generated token of every answer: looked up
    # once per token id and tokenizer (a vocabulary's worth at most).
    known = _JOINS.setdefault(tokenizer, {})

    def joins_run(token: int) -> bool:
        joins = known.get(token)
        if joins is None:
            # Skipped by the decode (control tokens), so the bytes on either side meet.
            joins = known[token] = bool(BYTE_PIECE.fullmatch(str(tokenizer.convert_ids_to_tokens(token)))) or (
                tokenizer.decode([token], skip_special_tokens=True) == ""
            )
        return joins

    return joins_run


def text_streamer(processor: Any, sink: TextSink) -> Any:
    """A transformers streamer that hands ``sink`` each stable piece of the answer with the
    count of tokens generated so far; the pieces add up to the answer's final text."""
    from transformers.generation.streamers import BaseStreamer

    class SinkStreamer(BaseStreamer):
        def __init__(self) -> None:
            # The first ``put`` is the prompt (or an encoder-decoder's decoder start token).
            self.prompt_seen = False
            self.text = IncrementalText(
                lambda ids: processor.decode(ids, skip_special_tokens=True), run_joiner(processor)
            )

        def put(self, value: Any) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self._send(self.text.push(value.reshape(-1).tolist()))

        def end(self) -> None:
            self._send(self.text.finish())

        def _send(self, delta: str) -> None:
            if delta:
                sink(delta, len(self.text.ids))

    return SinkStreamer()

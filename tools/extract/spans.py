"""Where each value sits in a JSON answer, and which generated tokens wrote it.

The answer is read once more with positions: every scalar (string, number, true, false, null)
gets its JSON pointer and its character span (a string's without its quotes; an empty string's
is its two quotes). The tokens that overlap a span are the ones that wrote the value, and the
least probable of them is the value's confidence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .schema import escape

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_LITERALS = {"true": True, "false": False, "null": None}


@dataclass(frozen=True)
class Leaf:
    """One scalar of the answer: where it is in the object and in the text."""

    pointer: str
    value: Any
    #: [start, end) in characters of the text
    start: int
    end: int


def leaves(text: str) -> list[Leaf]:
    """Every scalar of the JSON ``text``, in order; ValueError when ``text`` is not one JSON value."""
    found: list[Leaf] = []
    end = _value(text, _skip(text, 0), "", found)
    if _skip(text, end) != len(text):
        raise ValueError("text after the JSON value")
    return found


def _skip(text: str, at: int) -> int:
    return _WHITESPACE.match(text, at).end()  # type: ignore[union-attr]


def _value(text: str, at: int, pointer: str, found: list[Leaf]) -> int:
    if at >= len(text):
        raise ValueError("the JSON ends early")
    char = text[at]
    if char == "{":
        at = _skip(text, at + 1)
        if text.startswith("}", at):
            return at + 1
        while True:
            if not text.startswith('"', at):
                raise ValueError("a key must be a string")
            key, at = json.decoder.scanstring(text, at + 1)  # type: ignore[attr-defined]
            at = _skip(text, at)
            if not text.startswith(":", at):
                raise ValueError("':' expected")
            at = _value(text, _skip(text, at + 1), f"{pointer}/{escape(key)}", found)
            at = _skip(text, at)
            if text.startswith("}", at):
                return at + 1
            if not text.startswith(",", at):
                raise ValueError("',' or '}' expected")
            at = _skip(text, at + 1)
    if char == "[":
        at = _skip(text, at + 1)
        if text.startswith("]", at):
            return at + 1
        index = 0
        while True:
            at = _skip(text, _value(text, at, f"{pointer}/{index}", found))
            index += 1
            if text.startswith("]", at):
                return at + 1
            if not text.startswith(",", at):
                raise ValueError("',' or ']' expected")
            at = _skip(text, at + 1)
    if char == '"':
        value, end = json.decoder.scanstring(text, at + 1)  # type: ignore[attr-defined]
        # the characters between the quotes; an empty string is known by its quotes
        found.append(Leaf(pointer, value, at + 1, end - 1) if end - 1 > at + 1 else Leaf(pointer, value, at, end))
        return end
    for word, literal in _LITERALS.items():
        if text.startswith(word, at):
            found.append(Leaf(pointer, literal, at, at + len(word)))
            return at + len(word)
    number = _NUMBER.match(text, at)
    if number is None:
        raise ValueError(f"unexpected {char!r}")
    found.append(Leaf(pointer, json.loads(number.group(0)), at, number.end()))
    return number.end()


def token_spans(pieces: Sequence[bytes]) -> list[tuple[int, int]] | None:
    """[start, end) in characters of the decoded text for each token, from the tokens' bytes; a character
    split across tokens belongs to each token holding a byte of it. None when the bytes are not UTF-8."""
    data = b"".join(pieces)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    char_of: list[int] = []  # byte offset -> index of the character it belongs to
    for index, char in enumerate(text):
        char_of.extend([index] * len(char.encode("utf-8")))
    spans = []
    at = 0
    for piece in pieces:
        end = at + len(piece)
        spans.append((char_of[at], char_of[end - 1] + 1) if piece else (0, 0))
        at = end
    return spans


def confidence(leaf: Leaf, spans: Sequence[tuple[int, int]], probabilities: Sequence[float]) -> float | None:
    """The least probability among the tokens that overlap ``leaf``; None when no token is known for it."""
    touched = [p for (start, end), p in zip(spans, probabilities) if start < leaf.end and end > leaf.start]
    return round(min(touched), 4) if touched else None

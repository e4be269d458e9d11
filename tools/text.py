"""Text that crosses a trust boundary: what a model wrote, and what a user wrote into a prompt.

Model output is data. It goes back to the model as history, into terminals and into JSON,
so it is cleaned where it is produced: control characters (NUL, ESC, ...) are removed,
line endings become ``\\n``, and lone surrogates (half of a character) become U+FFFD.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

#: C0 controls but tab and line feed, DEL, C1 controls, and the two non-characters
_CONTROLS_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def clean_model_text(text: str) -> str:
    """``text`` as something every consumer takes: no control characters, no lone surrogates."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS_RE.sub("", text)
    return _SURROGATE_RE.sub("\ufffd", text)


#: control strings every family's chat markup uses, for engines whose tokenizer is not at hand
KNOWN_CONTROL_STRINGS = (
    # Gemma 4
    "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>",
    "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
    "<|think|>", "<|channel>", "<channel|>", "<|\"|>",
    # PaliGemma, BLIP-2 and the common ones
    "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "<image>", "<s>", "</s>",
    # other chat formats a served model may use
    "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
)

#: put inside a control string, it tokenizes as plain text and reads the same to a person
WORD_JOINER = "\u2060"


class Neutraliser:
    """Breaks a family's control strings in user text so they tokenize as plain text.

    A prompt, history turn or label holding ``<|turn>`` would otherwise become the real
    control token and forge a turn. A word joiner goes after the string's first character.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        chosen = sorted({s for s in strings if len(s) > 1}, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, chosen))) if chosen else None

    def __call__(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)


def tokenizer_control_strings(tokenizer: Any) -> set[str]:
    """Every special or added token of a tokenizer (control tokens, <locNNNN>, <segNNN>, ...)."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found.update(token.content for token in decoder.values() if getattr(token, "content", None))
    return found

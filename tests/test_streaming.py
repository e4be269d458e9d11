"""The streamed pieces of an answer add up to its final text, whatever the tokens are.

Real tokenizers of the tiny checkpoints: Gemma 4's SentencePiece with byte fallback (a run
of byte pieces decodes as one group, wholly U+FFFD when it is not UTF-8) and BLIP-2's OPT
byte-level BPE (a character split across tokens decodes to U+FFFD until it is whole).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoProcessor

from tools.runtimes.streaming import IncrementalText, answer_text, run_joiner, settled


@pytest.mark.parametrize(
    ("decoded", "expected"),
    [
        ("", ""),
        ("  word", "word"),
        ("word ", "word"),
        ("word\n", "word"),
        ("word\ufffd", "word"),
        ("word \ufffd\ufffd", "word"),
        ("a\ufffdb", "a\ufffdb"),  # a closed invalid group is final
        ("\ufffd", ""),
    ],
)
def test_settled_holds_back_what_may_change(decoded: str, expected: str) -> None:
    assert settled(decoded) == expected


def stream(processor, ids: list[int], chunk: int = 1) -> tuple[str, str]:
    text = IncrementalText(lambda part: processor.decode(part, skip_special_tokens=True), run_joiner(processor))
    pieces = [text.push(ids[n : n + chunk]) for n in range(0, len(ids), chunk)]
    pieces.append(text.finish())
    return "".join(pieces), answer_text(processor.decode(ids, skip_special_tokens=True))


def ids_of(tokenizer, pieces: list[str]) -> list[int]:
    return tokenizer.convert_tokens_to_ids(pieces)


@pytest.fixture(scope="module")
def gemma4_processor(tiny_gemma4):
    return AutoProcessor.from_pretrained(tiny_gemma4)


@pytest.fixture(scope="module")
def blip2_processor(tiny_blip2):
    return AutoProcessor.from_pretrained(tiny_blip2)


# Gemma 4's tiny vocabulary: byte pieces <0x00>..<0xFF>, a few words, control tokens.
GEMMA_CASES = {
    "ascii byte then a continuation byte: 'f' becomes U+FFFD": ["<0x66>", "<0xBB>", "_"],
    "a euro sign split over three byte pieces": ["<0xE2>", "<0x82>", "<0xAC>"],
    "an incomplete character at the end": ["<0x61>", "<0xE2>", "<0x82>"],
    "valid bytes, then a stray lead byte": ["<0x61>", "<0x62>", "<0xC3>"],
    "an invalid run closed by a word piece": ["<0xFF>", "<0xFE>", "_", "<0x61>"],
    "leading and trailing spaces": ["<0x20>", "<0x20>", "<0x61>", "<0x20>"],
    "only a space": ["<0x20>"],
    "a skipped special token inside a byte run": ["<0x00>", "<pad>", "<0x80>"],
}


@pytest.mark.parametrize("name", list(GEMMA_CASES))
def test_gemma4_byte_fallback_streams_add_up(gemma4_processor, name: str) -> None:
    ids = ids_of(gemma4_processor.tokenizer, GEMMA_CASES[name])
    assert gemma4_processor.tokenizer.unk_token_id not in ids
    for chunk in (1, 2, len(ids)):
        streamed, final = stream(gemma4_processor, ids, chunk)
        assert streamed == final


@given(data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_gemma4_any_token_sequence_streams_add_up(gemma4_processor, data) -> None:
    tokenizer = gemma4_processor.tokenizer
    byte_ids = ids_of(tokenizer, [f"<0x{n:02X}>" for n in range(256)])
    # Byte pieces most of the time: they are where decodes change after the fact.
    token = st.one_of(st.sampled_from(byte_ids), st.integers(0, len(tokenizer) - 1))
    ids = data.draw(st.lists(token, max_size=24))
    streamed, final = stream(gemma4_processor, ids)
    assert streamed == final


@given(text=st.text(max_size=12), data=st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_blip2_byte_level_streams_add_up(blip2_processor, text: str, data) -> None:
    tokenizer = blip2_processor.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids += data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=8))
    streamed, final = stream(blip2_processor, ids)
    assert streamed == final


class Counted:
    """A processor's decode and token lookup, counted: the work a streamer does per token."""

    def __init__(self, processor) -> None:
        self.tokenizer = self
        self.inner = processor.tokenizer
        self.decodes = self.lookups = 0

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        self.decodes += 1
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, token: int) -> str:
        self.lookups += 1
        return self.inner.convert_ids_to_tokens(token)


@pytest.mark.parametrize(
    ("pieces", "decodes"),
    [
        (["<0x61>"] + ["<0xE2>", "<0x82>", "<0xAC>"] * 4, 1),  # a run that never closes: only the end decodes it
        (["_", "<0x61>", "<0x62>", "_", "<0x63>"], 3),  # each word piece closes a run: one decode each, and the end
        (["_", "_", "_"], 4),
    ],
)
def test_a_token_that_only_lengthens_an_open_byte_run_decodes_nothing(gemma4_processor, pieces, decodes) -> None:
    counted = Counted(gemma4_processor)
    ids = ids_of(gemma4_processor.tokenizer, pieces)
    text = IncrementalText(lambda part: counted.decode(part, skip_special_tokens=True), run_joiner(gemma4_processor))
    streamed = "".join(text.push([token]) for token in ids) + text.finish()
    assert streamed == answer_text(gemma4_processor.decode(ids, skip_special_tokens=True))
    assert counted.decodes == decodes


def test_whether_a_token_joins_a_run_is_asked_of_the_tokenizer_once_per_token_id(gemma4_processor) -> None:
    counted = Counted(gemma4_processor)
    ids = ids_of(gemma4_processor.tokenizer, ["_", "<0x61>", "_", "<0x61>"] * 5)
    for _ in range(3):  # three answers from one processor
        joins = run_joiner(counted)
        assert [joins(token) for token in ids] == [False, True] * 10
    assert counted.lookups == 2

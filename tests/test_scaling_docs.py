"""docs/scaling.md's vLLM commands carry the flags every feature needs (tests/test_vllm.py runs them)."""

from __future__ import annotations

import json

import pytest

from tests.vllm import docs_command, docs_commands, flags_of
from tools.checks import MAX_IMAGES

#: a call's own images plus as many in its history: the most one request can carry
MOST_IMAGES = 2 * MAX_IMAGES
#: the flags each family's features need (docs/scaling.md's table), and the parser of its tool calls
NEEDED = {
    "google/gemma-4-E2B-it": {"--trust-request-mm-kwargs": None, "--enable-auto-tool-choice": None,
                              "--tool-call-parser": "gemma4"},
    "Qwen/Qwen3-VL-8B-Instruct": {"--trust-request-mm-kwargs": None},
}


@pytest.mark.parametrize("model", NEEDED)
def test_the_docs_command_carries_every_feature_flag(model):
    flags = flags_of(docs_command(model))
    assert NEEDED[model].items() <= flags.items(), flags
    assert json.loads(flags["--limit-mm-per-prompt"] or "{}") == {"image": MOST_IMAGES}
    assert flags["--api-key"] == "$VLLM_API_KEY" and {"--host", "--port"} <= flags.keys()


def test_every_gemma4_command_in_the_docs_has_the_same_feature_flags():
    gemma = [words for words in docs_commands() if words[2].startswith("google/gemma-4")]
    assert len(gemma) >= 3  # one GPU, tensor parallel, one per GPU behind a balancer
    for words in gemma:
        flags = flags_of(words)
        assert NEEDED["google/gemma-4-E2B-it"].items() <= flags.items(), words
        assert flags["--limit-mm-per-prompt"] == f'{{"image": {MOST_IMAGES}}}', words


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["--a", "1", "--b", "--c", "x y"], {"--a": "1", "--b": None, "--c": "x y"}),
        (["serve", "m", "--flag"], {"--flag": None}),
    ],
)
def test_flags_are_read_as_vllm_takes_them(words, expected):
    assert flags_of(words) == expected


def test_continued_lines_and_prefixed_variables_are_one_command():
    text = "```sh\nX=1 vllm serve m --a 1 \\\n    --b '{\"image\": 2}' &\necho done\n```\n"
    assert docs_commands(text) == [["vllm", "serve", "m", "--a", "1", "--b", '{"image": 2}']]

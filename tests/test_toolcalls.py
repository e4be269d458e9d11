"""Gemma 4 tool-call parsing, on real-format outputs and broken ones."""

from __future__ import annotations

import pytest

from tools.toolcalls import ToolCall, gemma_value_to_json, parse_reply

KNOWN = {"describe", "ocr", "detect", "compare_budgets"}
Q = '<|"|>'


@pytest.mark.parametrize(
    ("raw", "text", "calls", "invalid"),
    [
        ("<|tool_call>call:ocr{}<tool_call|>", "", [ToolCall("ocr", {})], []),
        (
            f"Sure.<|tool_call>call:detect{{labels:[{Q}cat{Q},{Q}dog, big{Q}]}}<tool_call|><turn|>",
            "Sure.",
            [ToolCall("detect", {"labels": ["cat", "dog, big"]})],
            [],
        ),
        (
            f"<|tool_call>call:describe{{prompt:{Q}What is {{this}}: x?{Q}}}<tool_call|>",
            "",
            [ToolCall("describe", {"prompt": "What is {this}: x?"})],
            [],
        ),
        ("A red square.<turn|>", "A red square.", [], []),
        ("<|channel>thought\nneed ocr<channel|>Reading.<|tool_call>call:ocr{}<tool_call|>", "Reading.", [ToolCall("ocr", {})], []),
        ("<|tool_call>call:paint{}<tool_call|>", "", [], ["unknown tool 'paint'"]),
        (f"<|tool_call>call:ocr{{lang:{Q}en}}<tool_call|>", "", [], ["unreadable arguments for ocr"]),
        ("<|tool_call>call:detect{labels:[", "", [], ["a tool call was cut off"]),
        ("<|tool_call>call:ocr[1, 2]<tool_call|>", "", [], ["arguments for ocr are not an object"]),
        (
            f"<|tool_call>call:ocr{{}}<tool_call|><|tool_call>call:detect{{labels:[{Q}car{Q}]}}<tool_call|>",
            "",
            [ToolCall("ocr", {}), ToolCall("detect", {"labels": ["car"]})],
            [],
        ),
    ],
)
def test_parse_reply(raw, text, calls, invalid):
    reply = parse_reply(raw, KNOWN)
    assert (reply.text, reply.calls, reply.invalid) == (text, calls, invalid)


@pytest.mark.parametrize(
    ("body", "value"),
    [
        ("{}", {}),
        (f"{{a:1,b:[true,null],c:{{d:{Q}e{Q}}}}}", {"a": 1, "b": [True, None], "c": {"d": "e"}}),
        ('{"quoted":2}', {"quoted": 2}),
        (f"{{k:{Q}a \"quote\" and \\ slash{Q}}}", {"k": 'a "quote" and \\ slash'}),
    ],
)
def test_gemma_values(body, value):
    assert gemma_value_to_json(body) == value


def test_agrees_with_the_transformers_response_parser(tiny_gemma4):
    """The same call read by transformers' own Gemma 4 response template gives the same call."""
    from transformers import AutoProcessor
    from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS

    tokenizer = AutoProcessor.from_pretrained(tiny_gemma4).tokenizer
    raw = f"Sure.<|tool_call>call:detect{{labels:[{Q}cat{Q}],max:3}}<tool_call|>"
    theirs = tokenizer.parse_response(raw, _RESPONSE_TEMPLATE_FALLBACKS[("gemma4",)], prefix="<|turn>model\n")
    ours = parse_reply(raw, KNOWN)
    call = theirs["tool_calls"][0]["function"]
    arguments = call["arguments"]
    assert ours.calls == [ToolCall(call["name"], arguments if isinstance(arguments, dict) else __import__("json").loads(arguments))]

"""The chat's tools: their declarations out (``CHAT_TOOLS``), and Gemma 4's native tool calls back in.

Gemma 4 writes a call as ``<|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>``:
object keys unquoted, strings between ``<|"|>`` delimiters, everything else JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field

CALL_RE = re.compile(r"<\|tool_call>call:(?P<name>[A-Za-z_][\w.-]*)(?P<body>.*?)<tool_call\|>", re.S)
STRING_DELIM = '<|"|>'
BARE_KEY_RE = re.compile(r"([{,]\s*)([A-Za-z_][\w.-]*)(\s*:)")
SPECIAL_RE = re.compile(r"<\|?[a-z_\"]+\|?>")


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


#: What the chat agent offers Gemma 4 through its native function calling. The images
#: are the conversation's; the model only picks the tool and its words.
CHAT_TOOLS: list[dict[str, Any]] = [
    _function(
        "describe", "Describe the attached images or answer a question about them.",
        {"prompt": {"type": "string", "description": "the question or instruction"}}, ["prompt"],
    ),
    _function("ocr", "Read all text in the attached image, in reading order.", {}, []),
    _function(
        "detect", "Find, locate or count objects in the attached image; returns labelled boxes.",
        {"labels": {"type": "array", "items": {"type": "string"}, "description": "object names, e.g. ['car']"}},
        ["labels"],
    ),
    _function(
        "compare_budgets", "Compare the answer at several visual-token budgets (image detail levels).",
        {"prompt": {"type": "string", "description": "the question to compare"}}, [],
    ),
]

CHAT_SYSTEM = (
    "You are a vision assistant with tools over the user's images. Call exactly one tool that best answers "
    "the user's message."
)


@dataclass(frozen=True)
class ToolCall:
    """A call of one tool: the one type from parser (or engine) to result."""

    name: Annotated[str, Field(description="describe, ocr, detect or compare_budgets")]
    arguments: Annotated[dict[str, Any], Field(description="the arguments the model chose")]
    #: the engine's id for the call, to answer it in the next turn; None where the model wrote it as text
    id: Annotated[str | None, Field(description="the engine's call id, where it gave one")] = None


@dataclass
class ParsedReply:
    """A model reply split into its prose and its tool calls; unreadable calls are listed, not lost."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


def gemma_value_to_json(body: str) -> Any:
    """Parse Gemma's argument syntax (bare keys, ``<|"|>`` strings) into Python values."""
    parts = body.split(STRING_DELIM)
    if len(parts) % 2 == 0:
        raise ValueError("unterminated string")
    out = []
    for i, part in enumerate(parts):
        out.append(json.dumps(part) if i % 2 else BARE_KEY_RE.sub(r'\1"\2"\3', part))
    return json.loads("".join(out))


def parse_reply(raw: str, known: set[str] | None = None) -> ParsedReply:
    """Tool calls in ``raw`` (generated text with special tokens); ``known`` limits the names accepted."""
    calls: list[ToolCall] = []
    invalid: list[str] = []
    for match in CALL_RE.finditer(raw):
        name, body = match["name"], match["body"].strip() or "{}"
        if known is not None and name not in known:
            invalid.append(f"unknown tool {name!r}")
            continue
        try:
            arguments = gemma_value_to_json(body)
        except ValueError:
            invalid.append(f"unreadable arguments for {name}")
            continue
        if not isinstance(arguments, dict):
            invalid.append(f"arguments for {name} are not an object")
            continue
        calls.append(ToolCall(name, arguments))
    prose = CALL_RE.sub("", raw)
    if "<|tool_call>" in prose:
        invalid.append("a tool call was cut off")
        prose = prose.split("<|tool_call>", 1)[0]
    prose = re.sub(r"<\|channel>.*?<channel\|>", "", prose, flags=re.S)  # thinking, if any
    return ParsedReply(text=SPECIAL_RE.sub("", prose).strip(), calls=calls, invalid=invalid)

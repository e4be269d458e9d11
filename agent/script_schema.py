"""What a turn of a `run` script may hold, checked before any turn runs.

One pydantic model for a turn and one for each tool's arguments: the types are strict (a
number is not a path, ``"yes"`` is not ``true``), sizes are the server's limits, and values
go through the same checks the server makes (tools.checks, tools.options, tools.reading.tiling), so a
script that passes here fails later only on what needs the model or the files. The first
problem becomes one line naming the turn and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import suppress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_validator

from tools import checks
from tools.checks import AUTO, BUDGET_FORMS, MAX_IMAGES, check_consensus, check_labels, check_text, two_budgets
from tools.errors import InvalidRequest, VlmError
from tools.extract import DEFAULT_MAX_NEW_TOKENS, DEFAULT_THRESHOLD, check_threshold, schema_from
from tools.options import GenerationOptions
from tools.reading.tiling import TILES_FORMS, parse_tiles

from .session import TOOL_ARGUMENTS, TOOLS

#: longest image path or URL a turn may name
MAX_REF_CHARS = 4096
#: most budgets a compare_budgets or consensus turn may list
MAX_BUDGETS = 16


def said(check: Callable[[Any], object], value: Any) -> Any:
    """``value`` once the core's ``check`` passed it; its refusal as a validation error, in the API's names."""
    try:
        check(value)
    except VlmError as exc:
        raise ValueError(exc.worded()) from None
    return value


def core(check: Callable[[Any], object]) -> AfterValidator:
    return AfterValidator(lambda value: said(check, value))


def budget_value(value: Any) -> Any:
    # Strict, as every field here: a number is a JSON number (not 2.5, not true), and text only says 'auto'.
    if value is None or type(value) is int or isinstance(value, str):
        with suppress(InvalidRequest):
            if checks.budget_value(value) == AUTO or not isinstance(value, str):
                return value
    raise ValueError(f"should be {BUDGET_FORMS}")


def tiles_value(value: Any) -> Any:
    if value is None:
        return value
    if type(value) is not int and not isinstance(value, str):
        raise ValueError(f"should be {TILES_FORMS}")
    return said(parse_tiles, value)


def labels_value(value: Any) -> Any:
    # One text of labels separated by commas, as a chat command gives them, or a list.
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(label, str) for label in value):
        raise ValueError("should be a list of labels")
    return said(check_labels, value)


def schema_value(value: Any) -> Any:
    if value is None or isinstance(value, (dict, str)):
        return value
    raise ValueError("should be a JSON Schema: a mapping, or its JSON text")


Prompt = Annotated[str, core(lambda text: check_text(text, "The prompt", "prompt"))]
Budget = Annotated[Any, PlainValidator(budget_value)]
Tiles = Annotated[Any, PlainValidator(tiles_value)]
MaxNewTokens = Annotated[int, core(lambda n: GenerationOptions(max_new_tokens=n))]
Temperature = Annotated[float, core(lambda t: GenerationOptions(temperature=t))]
TopP = Annotated[float, core(lambda p: GenerationOptions(top_p=p))]
Budgets = Annotated[list[int], Field(max_length=MAX_BUDGETS)]
#: a PDF's pages: 3, 2-5 or 1,3,7-9 (checked against the document's page count by the server)
Pages = Annotated[str | None, Field(max_length=200, pattern=r"^[0-9,\s-]*$|^all$")]


class Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DescribeArguments(Arguments):
    prompt: Prompt = ""
    budget: Budget = None
    max_new_tokens: MaxNewTokens = 512
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    pages: Pages = None


class OcrArguments(Arguments):
    budget: Budget = None
    max_new_tokens: MaxNewTokens = 512
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    engine: Literal["vlm", "rapidocr"] = "vlm"
    tiles: Tiles = None
    pages: Pages = None


class DetectArguments(Arguments):
    labels: Annotated[Any, PlainValidator(labels_value)]
    budget: Budget = None
    max_new_tokens: MaxNewTokens = 512
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    tiles: Tiles = None
    consensus: Annotated[Budgets | None, core(lambda b: b is None or two_budgets(b, "consensus"))] = None
    verify: bool = False
    pages: Pages = None

    @model_validator(mode="after")
    def consensus_alone(self) -> DetectArguments:
        if self.consensus is not None:
            said(lambda _: check_consensus(self.consensus or [], parse_tiles(self.tiles), self.budget), None)
        return self


class CompareArguments(Arguments):
    prompt: Prompt = ""
    task: Literal["describe", "ocr", "detect"] = "describe"
    # None: all of the model's own budgets, as the server takes it
    budgets: Annotated[Budgets | None, core(lambda b: b is None or two_budgets(b, "budgets"))] = None
    max_new_tokens: MaxNewTokens = 512
    pages: Pages = None


class ExtractArguments(Arguments):
    # A schema as a mapping (YAML or JSON) or as JSON text; checked as the server checks it, so a bad one
    # fails before the server starts.
    # "schema" is a name pydantic's models already use: an alias keeps the argument's name.
    json_schema: Annotated[Any, PlainValidator(schema_value), Field(alias="schema")] = None
    fields: str | None = None
    budget: Budget = None
    max_new_tokens: MaxNewTokens = DEFAULT_MAX_NEW_TOKENS
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    threshold: Annotated[float, core(check_threshold)] = DEFAULT_THRESHOLD
    verify: bool = True
    pages: Pages = None

    @model_validator(mode="after")
    def one_schema(self) -> ExtractArguments:
        said(lambda _: schema_from(self.json_schema, self.fields), None)
        return self


ARGUMENTS: dict[str, type[Arguments]] = {
    "describe": DescribeArguments, "ocr": OcrArguments, "detect": DetectArguments, "compare_budgets": CompareArguments,
    "extract": ExtractArguments,
}


def check_ref(ref: str) -> str:
    if not ref.strip() or len(ref) > MAX_REF_CHARS or "\x00" in ref:
        raise ValueError(f"should be a path or URL of 1 to {MAX_REF_CHARS} characters without NUL bytes")
    return ref


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user: Annotated[str, core(lambda text: check_text(text, "The message", "user"))]
    images: Annotated[list[Annotated[str, AfterValidator(check_ref)]], Field(max_length=MAX_IMAGES)] = []
    tool: Literal["describe", "ocr", "detect", "compare_budgets", "extract"] | None = None
    arguments: dict[str, Any] | None = None


class TurnError(ValueError):
    """A turn that breaks the schema, in one line."""


def check_turn(number: int, raw: Any) -> Turn:
    """``raw`` as a turn, its arguments checked against its tool's; else ``TurnError``."""
    for mapping, what in ((raw, "a turn"), (raw.get("arguments") if isinstance(raw, dict) else None, "arguments")):
        for key in mapping if isinstance(mapping, dict) else ():
            if not isinstance(key, str):
                raise TurnError(f"Turn {number} has the key {shown(key)} in {what}; keys are names, in text.")
    try:
        turn = Turn.model_validate(raw)
    except ValidationError as exc:
        raise TurnError(problem(number, exc)) from None
    if turn.arguments is not None:
        if turn.tool is None:
            raise TurnError(
                f"Turn {number}, arguments: name the tool they go to with tool: {', '.join(TOOLS)}."
            )
        try:
            ARGUMENTS[turn.tool].model_validate(turn.arguments)
        except ValidationError as exc:
            raise TurnError(problem(number, exc, turn.tool)) from None
    return turn


#: what pydantic's error kinds mean, in the words of a script's author
WORDS = {
    "string_type": "should be text",
    "int_type": "should be a whole number",
    "float_type": "should be a number",
    "bool_type": "should be true or false",
    "list_type": "should be a list",
    "dict_type": "should be a mapping of names to values",
    "model_type": "should be a mapping of names to values",
    "model_attributes_type": "should be a mapping of names to values",
}
_PYDANTIC_PREFIX = re.compile(r"^(Input |List |String |Value error, )")


def problem(number: int, error: ValidationError, tool: str | None = None) -> str:
    """The first problem of ``error`` as one line naming turn ``number`` and the field."""
    first = error.errors(include_url=False)[0]
    loc = (("arguments",) if tool else ()) + tuple(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        key = repr(key if len(key) <= 40 else key[:39] + "…")
        if tool:
            return f"Turn {number}: {tool} takes no argument {key}; it takes {', '.join(TOOL_ARGUMENTS[tool])}."
        return f"Turn {number} has the key {key}; a turn takes user, images, tool and arguments."
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    where = f"Turn {number}, {field}:" if field else f"Turn {number}:"
    if kind == "missing":
        return f"{where} is missing; every turn needs the user's text." if field == "user" else f"{where} is missing."
    message = WORDS.get(kind) or _PYDANTIC_PREFIX.sub("", first["msg"]).replace(" after validation", "")
    if loc[:1] == ("images",) and kind == "string_type":
        message = "should be text (a path or URL)"
    if message.endswith(".") or kind in ("too_long", "too_short"):
        return f"{where} {message.rstrip('.')}."
    return f"{where} {message}, got {shown(first['input'])}."


def shown(value: Any, limit: int = 40) -> str:
    """A value as the script would write it (JSON), cut short."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


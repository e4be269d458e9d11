"""The compact way to name fields: ``"total:number, date:date, vendor"`` instead of a JSON Schema.

A field is ``NAME[?][:TYPE]``, fields separated by commas. NAME is a letter or underscore then
letters, digits or underscores; ``?`` makes the field optional. TYPE is one of ``TYPES`` (a
string when left out), ``TYPE[]`` for a list of them, or choices ``a|b|c`` (one of these strings).
The result is an object schema whose fields are required unless marked optional.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InvalidRequest

MAX_FIELDS = 64
MAX_FIELDS_CHARS = 4000
MAX_NAME_CHARS = 64

#: the compact form's types and the schema each stands for
TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "text": {"type": "string"},
    "number": {"type": "number"},
    "integer": {"type": "integer"},
    "int": {"type": "integer"},
    "boolean": {"type": "boolean"},
    "bool": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "time": {"type": "string", "format": "time"},
    "datetime": {"type": "string", "format": "date-time"},
    "date-time": {"type": "string", "format": "date-time"},
    "email": {"type": "string", "format": "email"},
}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHOICE = re.compile(r"[^|\s,:]+")


def fields_schema(text: str, param: str = "fields") -> dict[str, Any]:
    """The object schema the compact ``text`` stands for; else one line naming the field at fault."""
    if not isinstance(text, str):
        raise InvalidRequest("The {param} must be text such as 'total:number, date:date, vendor'.", param=param)
    if len(text) > MAX_FIELDS_CHARS:
        raise InvalidRequest(f"The {{param}} are {len(text)} characters; the limit is {MAX_FIELDS_CHARS}.", param=param)
    pieces = [piece.strip() for piece in text.split(",")]
    if not any(pieces):
        raise InvalidRequest("Name at least one field in {param}, e.g. 'total:number, date:date, vendor'.", param=param)
    if len(pieces) > MAX_FIELDS:
        raise InvalidRequest(f"{len(pieces)} fields given in {{param}}; name at most {MAX_FIELDS}.", param=param)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for number, piece in enumerate(pieces, start=1):
        name, optional, schema = field_of(number, piece, param)
        if name in properties:
            raise InvalidRequest(f"Field {number} of {{param}} names {name!r} again; name each field once.", param=param)
        properties[name] = schema
        if not optional:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def field_of(number: int, piece: str, param: str) -> tuple[str, bool, dict[str, Any]]:
    """One ``NAME[?][:TYPE]``: its name, whether it is optional, and its schema."""
    if not piece:
        raise InvalidRequest(f"Field {number} of {{param}} is empty; separate fields with single commas.", param=param)
    name, colon, kind = (part.strip() for part in piece.partition(":"))
    optional = name.endswith("?")
    name = name.removesuffix("?").strip()
    shown = piece if len(piece) <= 40 else piece[:39] + "…"
    if not _NAME.fullmatch(name) or len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"Field {number} of {{param}} ({shown!r}) needs a name of letters, digits and underscores, starting "
            f"with a letter, at most {MAX_NAME_CHARS} characters.", param=param,
        )
    if not colon:
        return name, optional, dict(TYPES["string"])
    return name, optional, type_of(number, name, kind, param)


def type_of(number: int, name: str, kind: str, param: str) -> dict[str, Any]:
    listed = kind.endswith("[]")
    base = kind.removesuffix("[]").strip()
    if base.lower() in TYPES:
        schema = dict(TYPES[base.lower()])
    elif "|" in base:
        choices = [choice.strip() for choice in base.split("|")]
        if not all(_CHOICE.fullmatch(choice) for choice in choices):
            raise InvalidRequest(
                f"Field {number} of {{param}} ({name}) lists an empty or spaced choice; write choices as a|b|c.",
                param=param,
            )
        schema = {"type": "string", "enum": list(dict.fromkeys(choices))}
    else:
        known = ", ".join(TYPES)
        raise InvalidRequest(
            f"Field {number} of {{param}} ({name}) has the type {kind[:30]!r}; use {known}, TYPE[] for a list, or "
            "choices a|b|c.", param=param,
        )
    return {"type": "array", "items": schema} if listed else schema

"""Structured extraction: a JSON Schema in, an object that validates out, each value with its box and confidence.

``schema`` checks a caller's schema before any model loads and bounds it for decoding;
``fields`` reads the compact form (``"total:number, date:date, vendor"``); ``grammar`` and
``processor`` hold generation on the local runtime to the schema's grammar (llguidance), cached
by schema hash; ``spans`` finds each value's tokens for its confidence. Asking the family
where each value is (``tools.jobs.grounding``) and the job that puts it all together
(``tools.jobs.extract``) sit above the model; an engine gets the schema as its own
structured-output request (``tools.runtimes.engine``).

Only the pure checks are imported here: they run before a model (and torch) loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest
from .fields import fields_schema
from .schema import Schema, prepare

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEFAULT_THRESHOLD", "Schema", "check_threshold", "fields_schema", "prepare",
           "schema_from"]

#: values whose confidence is under this are read again
DEFAULT_THRESHOLD = 0.5
#: an extraction's default answer cap: an object takes more tokens than a caption
DEFAULT_MAX_NEW_TOKENS = 1024


def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InvalidRequest(f"{{param}} must be between 0 and 1, got {threshold!r}.", param="threshold")
    return float(threshold)


def schema_from(schema: str | Mapping[str, Any] | Schema | None = None, fields: str | None = None) -> Schema:
    """The checked schema of a call that gives either a JSON Schema (text or object) or compact fields."""
    if isinstance(schema, Schema) and fields is None:
        return schema
    if schema is not None and fields is not None:
        raise InvalidRequest("Give either {param} or {param:fields}, not both.", param="schema")
    if fields is not None:
        return prepare(fields_schema(fields), param="fields")
    if schema is None:
        raise InvalidRequest(
            "Say what to extract: a JSON Schema as {param}, or compact {param:fields} such as "
            "'total:number, date:date, vendor'.", param="schema",
        )
    return prepare(schema)  # type: ignore[arg-type]

"""The ``extract`` MCP tool: a JSON Schema (or compact fields) in, the object and a per-value report out.

A module of its own, on the server's shared helpers (``running.run_tool``, the argument types
in ``arguments``, the result builders in ``rendering``). The schema is
checked here, before the call waits for the model: a bad one is refused at once, even while
the model loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, TextContent
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from tools.extract import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_THRESHOLD,
    check_threshold,
    schema_from,
)
from tools.results import ExtractedField, ExtractResult

from .arguments import IMAGE_REF, Budget, Pages, Temperature, TopP
from .rendering import noted, picture_result, stats
from .resident import State
from .running import owner_of, progress_to, resident_of, run_tool


def _schema_value(value: Any) -> Any:
    """An object, its JSON text or nothing; anything else (the SDK turns JSON text it can parse into values) is
    refused as what it is, instead of as two failed types."""
    if value is None or isinstance(value, (dict, str)):
        return value
    kind = {list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "not an object")
    raise PydanticCustomError("schema", "Input should be a JSON Schema: an object, or its JSON text; got {kind}",
                              {"kind": kind})


SchemaArgument = Annotated[
    dict[str, Any] | str | None,
    BeforeValidator(_schema_value),
    Field(
        description="a JSON Schema (an object, or its JSON text) describing the one object to extract, e.g. "
        '{"type": "object", "properties": {"total": {"type": "number"}, "date": {"type": "string", "format": '
        '"date"}}, "required": ["total"]}; $ref only within the schema (#/$defs/NAME); give this or fields'
    ),
]
FieldsArgument = Annotated[
    str | None,
    Field(
        description="the fields in short instead of a schema: 'total:number, date:date, vendor' (types string, "
        "number, integer, boolean, date, time, datetime, email; TYPE[] a list; a|b|c choices; NAME? optional)"
    ),
]


def field_line(f: ExtractedField, several: bool) -> str:
    parts = [] if f.confidence is None else [f"confidence {f.confidence:.3f}"]
    if f.box is not None:
        parts.append(f"box {f.box}" + (f" on image {(f.image or 0) + 1}" if several else ""))
    if f.verified == "changed":
        parts.append(f"changed from {json.dumps(f.first_value, ensure_ascii=False)} on a second look")
    elif f.verified is not None:
        parts.append(f"second look: {f.verified}")
    value = json.dumps(f.value, ensure_ascii=False)
    return f"{f.path.lstrip('/') or '/'}: {value}" + (f" ({'; '.join(parts)})" if parts else "")


async def extract(
    images: Annotated[list[str], Field(description=f"one or more images of the same document; each {IMAGE_REF}")],
    ctx: Context[State],
    schema: SchemaArgument = None,
    fields: FieldsArgument = None,
    budget: Budget = None,
    max_new_tokens: Annotated[
        int,
        Field(description="cap on generated tokens for the object; an object cut by it comes back as null and says so"),
    ] = DEFAULT_MAX_NEW_TOKENS,
    threshold: Annotated[
        float, Field(description="values whose confidence is below this (0..1) are read again from their crop")
    ] = DEFAULT_THRESHOLD,
    verify: Annotated[bool, Field(description="read values under the threshold again, at a higher budget")] = True,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    pages: Pages = None,
) -> Annotated[CallToolResult, ExtractResult]:
    """Extract structured data from images: JSON that validates against a schema, each value with its box and confidence.

    Give a JSON Schema (`schema`) or short `fields`. The model writes under the schema's grammar, so
    `data` validates (checked again after decoding; `valid` says so). Each value in `fields` comes
    with the box it was read from in pixels of the original image (families that ground: Gemma 4,
    Qwen3-VL, PaliGemma; BLIP-2 gives none and says so), a confidence from its tokens'
    probabilities, and, under `threshold`, a second read from its crop (`verified`: agree,
    changed or uncertain). The annotated picture shows each located value's box and name.
    A PDF's pages (all, or `pages`) are read as the images: `sources` names each one's page.
    """
    # Refused before the call waits for the model: a bad schema or threshold needs no model.
    chosen = schema_from(schema, fields)
    check_threshold(threshold)
    out = await anyio.to_thread.run_sync(resident_of(ctx).output_path, "extract", owner_of(ctx))

    progress = progress_to(ctx)

    result = await run_tool(
        ctx,
        lambda vision, options: vision.extract(
            images, schema=chosen, budget=budget, options=options, annotated_path=out, threshold=threshold,
            verify=verify, progress=progress, pages=pages,
        ),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, images=images,
    )
    several = len(result.image_ids) > 1
    head = (
        f"extracted {len(result.fields)} values, valid for the schema" if result.valid
        else f"no valid object: {result.problem}"
    )
    data = [] if result.data is None else [json.dumps(result.data, ensure_ascii=False)]
    lines = [head, *data, *(field_line(f, several) for f in result.fields), *noted(result.notes), stats(result)]
    text = "\n".join(lines)
    if result.annotated_path:
        return await anyio.to_thread.run_sync(picture_result, text, Path(out), result)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=result.model_dump(mode="json")
    )

"""The tools' argument types: what each argument takes, its description in the schema, and the
checks pydantic runs on it before a tool is called.

A budget goes through the one parse every door uses (``tools.checks.budget_value``) and tiles
through the core's (``tools.reading.tiling.parse_tiles``, in ``Vision``); here they only keep to
the JSON types this door takes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from tools.checks import AUTO, BUDGET_FORMS, budget_value
from tools.errors import InvalidRequest

IMAGE_REF = (
    "a local file path (inside the server's allowed folders), an http(s) URL, "
    "a data:image/...;base64 URI, or an image_id returned by an earlier call; a PDF (doc.pdf, doc.pdf#pages=2-5) "
    "or a video clip (mp4, mov, webm, animated GIF; clip.mp4#t=10,20 for seconds 10 to 20) too"
)


class HistoryTurn(BaseModel):
    """One earlier turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str = Field("", description="the turn's text")
    images: list[str] = Field(default_factory=list, description=f"the turn's images: each {IMAGE_REF}")


def _budget_value(value: Any) -> Any:
    """'auto' in any case or spacing, as the CLI takes it, or text of plain digits; numbers are left
    to the annotation's types. true/false are not budgets (lax ints would make them 1/0)."""
    if not isinstance(value, str | bool):
        return value
    try:
        parsed = budget_value(value)
    except InvalidRequest:
        parsed = None
    # Text narrower than the CLI's: not '-5' or '1_000', which int() reads.
    digits = isinstance(value, str) and value.strip().isascii() and value.strip().isdigit()
    if parsed == AUTO or (parsed is not None and digits):
        return parsed
    raise PydanticCustomError("budget", f"Input should be {BUDGET_FORMS}")


def _tiles_value(value: Any) -> Any:
    """null means off; true, 2.5 or a list are not a number of tiles (lax validation took true as 1: tiling off)."""
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise PydanticCustomError("tiles", "Input should be 'auto', 'off' or a whole number of tiles across the long side, e.g. 3")


Budget = Annotated[
    int | Literal["auto"] | None,
    BeforeValidator(_budget_value),
    Field(
        description="visual-token budget, for families that take one (Gemma 4: 70, 140, 280, 560 or 1120; "
        "more keeps finer detail); vlm-agent://model lists the model's budgets and default; 'auto' picks the "
        "smallest that keeps what the task needs and says why in budget_reason"
    ),
]
MaxNewTokens = Annotated[int, Field(description="cap on generated tokens; a cut answer says so")]
Temperature = Annotated[float, Field(description="0 decodes greedily; above 0 samples")]
TopP = Annotated[float, Field(description="nucleus sampling mass, used when temperature > 0")]
ImageRef = Annotated[str, Field(description=IMAGE_REF)]
Tiles = Annotated[
    str | int | None,
    BeforeValidator(_tiles_value),
    Field(
        description="read in overlapping tiles: 'auto' tiles only an image the engine would shrink "
        "(rapidocr past 2000 px, Gemma 4 past what budget 1120 sees), 'off', or 1-8 tiles across the long side; "
        "boxes come back in pixels of the whole image; default off, and auto for a PDF's pages (ocr)"
    ),
]
Pages = Annotated[
    str | None,
    Field(
        description="which pages of a PDF to use, e.g. '3', '2-5' or '1,3,7-9' (default: all, within the server's "
        "page limit); a '#pages=' on the reference itself wins"
    ),
]
History = Annotated[
    list[HistoryTurn] | None,
    Field(
        description="earlier turns, oldest first, always as structured turns: the server folds them into the "
        "prompt the way the model's family keeps context, and says in notes what it left out"
    ),
]


def turns_of(history: list[HistoryTurn] | None) -> list[dict[str, Any]]:
    return [turn.model_dump() for turn in history or []]


def history_images(history: list[HistoryTurn] | None) -> list[str]:
    return [ref for turn in history or [] for ref in turn.images or []]

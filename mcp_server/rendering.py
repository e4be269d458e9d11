"""Results as MCP content: a short text, the picture where there is one, and structured content.

Some clients hand their model only the text, so the text carries the notes and a stats line
too; the structured content matches the tool's output schema.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from mcp.server.mcpserver import Image
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from tools.boxes.detections import Detection
from tools.boxes.drawing import fit_for_client
from tools.results import BudgetTimings, Result

from . import pictures


def stats(result: Result) -> str:
    budget = f"budget {result.budget}, " if result.budget is not None else ""
    if result.budget_reason:
        budget = f"budget {result.budget} ({result.budget_reason}), "
    image = f"{result.image_tokens} image tokens, " if result.image_tokens is not None else ""
    cut = " (cut at max_new_tokens)" if result.finish_reason == "length" else ""
    return (
        f"[{result.family}, {budget}{image}{result.generated_tokens} tokens"
        f"{cut}, {result.timings.total_ms:.0f} ms; image_ids: {', '.join(result.image_ids)}]"
    )


def split_ms(timings: BudgetTimings) -> str:
    """A budget row's own encoding and prefill and the batch's shared decode, where the backend measured them."""
    if timings.prefill_ms is None or timings.decode_ms is None:
        return ""
    return (f" (encode {timings.preprocess_ms:.0f} + prefill {timings.prefill_ms:.0f} + "
            f"shared decode {timings.decode_ms:.0f})")


def box_line(detection: Detection) -> str:
    extra = []
    if detection.agreement is not None:
        extra.append(f"found at budgets {', '.join(map(str, detection.agreement.budgets))}")
    if detection.verified is not None:
        extra.append("verified" if detection.verified else "not verified")
    if detection.tiles is not None:
        extra.append(f"tiles {', '.join(map(str, detection.tiles))}")
    if detection.origin is not None:
        extra.append(detection.origin.label)
    return f"{detection.label}: {list(detection.box)}" + (f" ({'; '.join(extra)})" if extra else "")


def noted(notes: Sequence[str]) -> list[str]:
    # Some clients give their model only the text: what was cut or left out must be there too.
    return [f"note: {note}" for note in notes]


def text_result(result: Result, text: str) -> CallToolResult:
    lines = [text, "", *noted(result.notes), stats(result)]
    return CallToolResult(
        content=[TextContent(type="text", text="\n".join(lines))],
        structured_content=result.model_dump(mode="json"),
    )


def picture_result(text: str, picture: Path, structured: BaseModel) -> CallToolResult:
    """Text, the picture sized for common clients, and a link to the full-size picture."""
    from PIL import Image as PILImage

    with PILImage.open(picture) as full:
        size = full.size
        png = fit_for_client(full.convert("RGB"))
    with PILImage.open(io.BytesIO(png)) as sent:
        shown = sent.size
    # Never a silent cut: a smaller copy says so, and where the full one is.
    scaled = f"downscaled from {size[0]}x{size[1]} to {shown[0]}x{shown[1]}; " if shown != size else ""
    text = f"{text}\npicture: {scaled}full size at {pictures.uri(picture)}"
    return CallToolResult(
        content=[
            TextContent(type="text", text=text),
            Image(data=png, format="png").to_image_content(),
            pictures.link(picture, size),
        ],
        structured_content=structured.model_dump(mode="json"),
    )

"""Structured results: what every adapter prints, serialises or returns as MCP structured content."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .boxes.detections import Detection
from .inputs.origin import Origin
from .toolcalls import ToolCall


class Timings(BaseModel):
    """Wall-clock milliseconds of one call."""

    preprocess_ms: float = Field(
        0.0, description="chat template, image resizing and patching, and encoding the images that were not cached"
    )
    generate_ms: float = Field(0.0, description="prefill and decoding")
    total_ms: float = Field(0.0, description="the whole call, image loading included")


class BudgetTimings(Timings):
    """One budget's share of a comparison run as one batch: its own encoding and prefill, and the shared decode.

    ``preprocess_ms`` is this budget's own chat template and image encoding; ``total_ms`` is
    ``preprocess_ms + prefill_ms + decode_ms``, so the rows' totals add up to more than the call.
    """

    prefill_ms: float | None = Field(
        None, description="this budget's own prefill, up to its first token; null where the engine does not say"
    )
    decode_ms: float | None = Field(
        None, description="decoding the rest, one batch for every budget (the same figure on each row); "
        "null where the engine does not say"
    )


class CacheReport(BaseModel):
    """What a call took from the backend's caches instead of computing it."""

    vision: Literal["hit", "miss", "partial", "none"] = Field(
        description="hit: no image went through the vision tower; miss: every image did; "
        "partial: some did; none: the prompt has no image"
    )
    reused_prompt_tokens: int = Field(
        0, description="leading prompt tokens whose KV cache came from an earlier call instead of being prefilled"
    )


class Result(BaseModel):
    text: str = Field(description="the model's answer")
    model: str = Field(description="hub id or local path of the model")
    family: str = Field(description="model family (gemma4, paligemma, blip2, ...); rapidocr for the offline OCR")
    runtime: Literal["local", "engine", "offline"] = Field(
        "local", description="where the model ran: in the server, on a serving engine, or no model (offline OCR)"
    )
    budget: int | None = Field(description="visual-token budget used; null for fixed-resolution families")
    budget_reason: str | None = Field(None, description="why this budget, when the call asked for budget 'auto'")
    image_ids: list[str] = Field(description="ids of this call's images, usable in later calls instead of the bytes")
    image_tokens: int | None = Field(
        description="image tokens actually in the prompt; null when unknown (a serving engine does not say)"
    )
    prompt_tokens: int
    generated_tokens: int
    finish_reason: Literal["stop", "length"] = Field(description="length: cut at max_new_tokens")
    history_turns: int = Field(0, description="prior turns sent to the model")
    timings: Timings
    notes: list[str] = Field(default_factory=list, description="anything cut, dropped or ignored")
    cache: CacheReport | None = Field(None, description="reuse of earlier work; null where the family keeps none")
    sources: list[Origin] | None = Field(
        None, description="the PDF pages or clip frames the call looked at, in order; null for images alone"
    )


class DescribeResult(Result):
    task: Literal["describe"] = "describe"


class TileOut(BaseModel):
    """One tile of an image read in tiles."""

    index: int
    box: list[int] = Field(description="[x1, y1, x2, y2] of the tile in pixels of the original image")
    text: str | None = Field(None, description="what the model read in this tile (ocr, engine vlm)")


class PageText(BaseModel):
    """What was read on one page of a PDF (or one frame of a clip)."""

    origin: Origin
    text: str
    generated_tokens: int = Field(0, description="tokens the model wrote for this page; 0 for the offline engine")
    finish_reason: Literal["stop", "length"] = "stop"
    lines: list[Detection] | None = Field(None, description="one box per text line, in pixels of the rendered page (rapidocr)")
    tiles: list[TileOut] | None = Field(None, description="the tiles the page was read in; null when it was read whole")


class OcrResult(Result):
    task: Literal["ocr"] = "ocr"
    engine: Literal["vlm", "rapidocr"] = Field("vlm", description="who read the text: the model, or the offline OCR")
    lines: list[Detection] | None = Field(
        None, description="one box per text line, label = its text, in reading order (engine rapidocr)"
    )
    tiles: list[TileOut] | None = Field(
        None, description="the tiles the image was read in, row by row; null when it was read whole"
    )
    pages: list[PageText] | None = Field(
        None, description="a PDF (or clip): the text of each page (or frame), in order; text joins them"
    )


class PartBoxes(BaseModel):
    """The boxes found on one page of a PDF or one frame of a clip."""

    origin: Origin
    image_size: list[int] = Field(description="[width, height] of the rendered page or decoded frame")
    detections: list[Detection]


class BoxesResult(Result):
    """What detect and segment share: labelled boxes on one image."""

    labels: list[str]
    image_size: list[int] = Field(description="[width, height] of the original image")
    detections: list[Detection]
    annotated_path: str | None = Field(None, description="full-size annotated PNG, when one was written")
    consensus: list[int] | None = Field(
        None, description="detect: the budgets run together and fused (weighted box fusion); null for one budget"
    )
    tiles: list[TileOut] | None = Field(
        None, description="the tiles the image was read in, row by row; null when it was read whole"
    )
    parts: list[PartBoxes] | None = Field(
        None, description="a PDF or clip: the boxes of each page or frame (detections lists them all, each with "
        "its origin); the annotated picture is a contact sheet of them"
    )


class DetectResult(BoxesResult):
    task: Literal["detect"] = "detect"


class SegmentResult(BoxesResult):
    task: Literal["segment"] = "segment"


class BudgetRun(BaseModel):
    """One budget's run inside a comparison."""

    budget: int
    image_tokens: int | None = Field(description="null when unknown (a serving engine does not say)")
    seen_size: list[int] = Field(description="[width, height] the vision encoder saw at this budget")
    prompt_tokens: int
    generated_tokens: int
    finish_reason: Literal["stop", "length"]
    text: str
    detections: list[Detection] | None = Field(None, description="boxes, for task detect")
    agreement: float = Field(description="agreement with the highest budget's output, 0..1")
    timings: BudgetTimings
    cache: CacheReport | None = None


class CompareResult(BaseModel):
    task: Literal["describe", "ocr", "detect"]
    model: str
    family: str
    image_ids: list[str]
    image_size: list[int] = Field(description="[width, height] of the original image")
    prompt: str
    labels: list[str]
    reference_budget: int = Field(description="the highest budget, which the others are compared with")
    metric: str
    metric_description: str
    threshold: float = Field(description="agreement at or above this counts as the same answer")
    recommended_budget: int = Field(
        description="the smallest budget that agrees with the reference and keeps what the task needs "
        "(the rule of budget 'auto')"
    )
    recommendation_reason: str = Field("", description="why that budget")
    fused: list[Detection] | None = Field(
        None, description="detect: every budget's boxes fused (weighted box fusion), each with its agreement"
    )
    runs: list[BudgetRun]
    picture_path: str | None = Field(None, description="side-by-side PNG of every budget, when one was written")
    source: Origin | None = Field(None, description="the PDF page or clip frame compared; null for an image")
    total_ms: float
    notes: list[str] = Field(default_factory=list)


class ChatResult(Result):
    task: Literal["chat"] = "chat"
    tool_calls: list[ToolCall] = Field(
        default_factory=list, description="vision tools the model chose to call, in order; empty for a text answer"
    )


class ExtractedField(BaseModel):
    """One value of an extraction: where it was read, how sure the model was, and whether a second look agreed."""

    path: str = Field(description="JSON pointer of the value in data, e.g. /total or /items/0/name")
    value: Any = Field(description="the value as it stands in data")
    confidence: float | None = Field(
        description="the lowest probability the model gave any token of the value, among the tokens the schema "
        "allowed at that step (0..1); null where the runtime gives no probabilities (a serving engine)"
    )
    box: list[int] | None = Field(
        None, description="[x1, y1, x2, y2] in pixels of the original image where the value was read; null when "
        "it was not located (or the family cannot locate)"
    )
    image: int | None = Field(None, description="which of the call's images (0 = the first) the box is on")
    verified: Literal["agree", "changed", "uncertain"] | None = Field(
        None, description="the re-read of a value under the confidence threshold, from its crop at a higher "
        "budget: agree (same value), changed (the re-read was sure and replaced it), uncertain (it differed "
        "without being sure, or gave nothing); null: not re-read"
    )
    reread: Any = Field(None, description="what the re-read gave, when the value was re-read")
    reread_confidence: float | None = Field(None, description="the re-read's confidence, when there was one")
    first_value: Any = Field(None, description="the first read's value, when the re-read changed it")


class ExtractResult(Result):
    task: Literal["extract"] = "extract"
    data: dict[str, Any] | None = Field(
        description="the extracted object; it validates against the schema when valid is true; null when the "
        "answer was cut before the object was complete"
    )
    valid: bool = Field(description="whether data validates against the schema (formats checked too)")
    problem: str | None = Field(None, description="why data is null or does not validate; null when valid")
    schema_hash: str = Field(description="hash of the schema decoding ran under; its compiled grammar is cached by it")
    fields: list[ExtractedField] = Field(description="every value of data, in order, with its box and confidence")
    grounded: bool = Field(description="whether the model's family can locate values (boxes); BLIP-2 cannot")
    threshold: float = Field(description="values whose confidence is below this were re-read")
    image_sizes: list[list[int]] = Field(description="[width, height] of each image, in order")
    annotated_path: str | None = Field(
        None, description="full-size PNG with each located value's box and name, when one was written"
    )

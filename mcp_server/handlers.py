"""The MCP tools: the vision core's operations as typed, documented functions.

Each tool is a module-level async function whose ``ctx`` carries the lifespan's ``State``
(the ``Resident`` model). It goes through one helper (``running.run_tool``): wait for the model,
build the generation options, run its ``tools.vision.Vision`` call (with keyword arguments)
on a worker thread, and return the structured result; the tool then only turns that into MCP
content (``rendering``).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult
from pydantic import Field

from tools.results import (
    ChatResult,
    CompareResult,
    DescribeResult,
    DetectResult,
    OcrResult,
)

from .arguments import (
    IMAGE_REF, Budget, History, ImageRef, MaxNewTokens, Pages, Temperature, Tiles, TopP, history_images, turns_of,
)
from .extract_tool import extract
from .rendering import box_line, noted, picture_result, split_ms, stats, text_result
from .resident import State
from .running import owner_of, progress_to, resident_of, run_tool


async def describe(
    images: Annotated[list[str], Field(description=f"one or more images; each {IMAGE_REF}")],
    ctx: Context[State],
    prompt: Annotated[str, Field(description="question or instruction; empty asks for a description")] = "",
    history: History = None,
    budget: Budget = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    pages: Pages = None,
) -> Annotated[CallToolResult, DescribeResult]:
    """Describe images or answer a question about them (captions, visual Q&A, comparisons, follow-ups).

    Pass several images to compare them; pass `history` to continue a conversation: the server
    keeps the context the way the model's family does (vlm-agent://model says how) and lists in
    `notes` what it had to leave out. A PDF's pages go in as images; a video clip goes alone,
    through the model's own video path (Gemma 4, Qwen3-VL), its frames with their timestamps.
    """
    result = await run_tool(
        ctx,
        lambda vision, chosen: vision.describe(
            images=images, prompt=prompt, history=turns_of(history), budget=budget, options=chosen, pages=pages
        ),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stream=True,
        images=[*images, *history_images(history)],
    )
    return text_result(result, result.text)


async def ocr(
    image: ImageRef,
    ctx: Context[State],
    budget: Budget = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    engine: Annotated[
        Literal["vlm", "rapidocr"],
        Field(
            description="vlm: the loaded vision-language model; rapidocr: offline PP-OCR, no model needed, "
            "adds one box per text line (no budget)"
        ),
    ] = "vlm",
    tiles: Tiles = None,
    pages: Pages = None,
) -> Annotated[CallToolResult, OcrResult]:
    """Read all text in an image, in reading order and in its original language and script.

    For small or dense text, a higher budget (560 or 1120) reads more accurately.
    engine 'rapidocr' reads printed text offline without the model and returns line boxes.
    A PDF is read page by page (`pages` chooses them): `pages` in the result has each page's text.
    """
    result = await run_tool(
        ctx,
        lambda vision, chosen: vision.ocr(
            image=image, budget=budget, options=chosen, engine=engine, tiles=tiles, pages=pages
        ),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stream=True, model=engine == "vlm",
        images=[image],
    )
    return text_result(result, result.text)


async def detect(
    image: ImageRef,
    labels: Annotated[list[str], Field(description="what to find, e.g. ['person', 'car']")],
    ctx: Context[State],
    budget: Budget = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    tiles: Tiles = "off",
    consensus: Annotated[
        list[int] | None,
        Field(
            description="budgets to run together and fuse (weighted box fusion), e.g. [280, 560, 1120]; "
            "each box then reports which budgets found it (agreement); leave budget and tiles unset"
        ),
    ] = None,
    verify: Annotated[
        bool, Field(description="ask the model about each box's crop at budget 1120; each box reports verified")
    ] = False,
    pages: Pages = None,
) -> Annotated[CallToolResult, DetectResult]:
    """Find labelled objects: boxes [x1, y1, x2, y2] in pixels of the original image, plus an annotated picture.

    The full-size annotated PNG is saved on the server (annotated_path); the picture
    in the result is a downscaled copy. On a PDF or a clip, every page or frame is searched:
    each box names its page or frame (origin, with the frame's time), and the picture is a contact sheet.
    """
    # Pruning the output folder touches every file in it: off the event loop too.
    out = await anyio.to_thread.run_sync(resident_of(ctx).output_path, "detect", owner_of(ctx))
    detected = await run_tool(
        ctx,
        lambda vision, chosen: vision.detect(
            image=image, labels=labels, budget=budget, options=chosen, annotated_path=out, tiles=tiles,
            consensus=consensus, verify=verify, pages=pages,
        ),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, images=[image],
    )
    lines = [box_line(d) for d in detected.detections] or ["nothing found"]
    text = "\n".join([f"{len(detected.detections)} detections", *lines, *noted(detected.notes), stats(detected)])
    # Decoding and scaling a big picture is CPU work: off the event loop, so pings and other calls go on.
    return await anyio.to_thread.run_sync(picture_result, text, out, detected)


async def compare_budgets(
    image: ImageRef,
    ctx: Context[State],
    prompt: Annotated[
        str, Field(description="the question (describe) or the comma-separated labels (detect); unused for ocr")
    ] = "",
    task: Annotated[Literal["describe", "ocr", "detect"], Field(description="which tool to compare")] = "describe",
    budgets: Annotated[
        list[int] | None, Field(description="budgets to run, from the model's budgets; empty: all of them")
    ] = None,
    max_new_tokens: MaxNewTokens = 512,
    pages: Annotated[str | None, Field(description="a PDF: the one page to compare, e.g. '3'")] = None,
) -> Annotated[CallToolResult, CompareResult]:
    """Run one image and prompt at several visual-token budgets and compare them side by side.

    Reports per budget the image tokens, output, timings and agreement with the
    highest budget, recommends the smallest budget that agrees, and returns one
    picture with every budget's result. Families with budgets only (vlm-agent://model lists them).
    A PDF gives one page (`pages`, or doc.pdf#page=3), a clip one frame (clip.mp4#t=SECONDS; default its middle).
    """
    out = await anyio.to_thread.run_sync(resident_of(ctx).output_path, "budgets", owner_of(ctx))

    progress = progress_to(ctx)

    result = await run_tool(
        ctx,
        lambda vision, chosen: vision.compare_budgets(
            image=image, task=task, prompt=prompt, budgets=budgets, options=chosen, picture_path=out,
            progress=progress, pages=pages,
        ),
        max_new_tokens=max_new_tokens, images=[image],
    )
    rows = [
        f"{run.budget:>5}  {'?' if run.image_tokens is None else run.image_tokens:>5} tokens  "
        f"{run.timings.total_ms:>8.0f} ms{split_ms(run.timings)}  agreement {run.agreement:.2f}"
        for run in result.runs
    ]
    text = "\n".join(
        [
            f"{task} at budgets {', '.join(str(r.budget) for r in result.runs)} ({result.metric} vs {result.reference_budget})",
            *rows,
            f"recommended budget: {result.recommended_budget} ({result.recommendation_reason})",
            *noted(result.notes),
        ]
    )
    return await anyio.to_thread.run_sync(picture_result, text, out, result)


async def chat(
    message: Annotated[str, Field(description="the user's message")],
    ctx: Context[State],
    images: Annotated[list[str], Field(description=f"images of this message; each {IMAGE_REF}")] = [],  # noqa: B006
    history: History = None,
    budget: Budget = None,
    max_new_tokens: MaxNewTokens = 256,
) -> Annotated[CallToolResult, ChatResult]:
    """One assistant turn of a vision chat: the model answers in text or picks vision tools to call.

    The model sees the conversation and declarations of describe, ocr, detect and
    compare_budgets, and answers through its native function calling; `tool_calls`
    lists the calls it chose (the caller runs them). Families with function calling only
    (vlm-agent://model says `chat`): others answer with an error, and the caller picks a tool itself.
    """
    result = await run_tool(
        ctx,
        lambda vision, chosen: vision.chat(
            images=images, prompt=message, history=turns_of(history), budget=budget, options=chosen
        ),
        max_new_tokens=max_new_tokens, stream=True, images=[*images, *history_images(history)],
    )
    calls = [f"call {c.name}({json.dumps(c.arguments)})" for c in result.tool_calls]
    return text_result(result, "\n".join([result.text, *calls]).strip() or "(no text)")


#: every tool the server offers, in the order clients list them
TOOLS = (describe, ocr, detect, compare_budgets, chat, extract)


#: what clients show for each tool
TITLES = {
    "describe": "Describe images",
    "ocr": "Read text (OCR)",
    "detect": "Detect objects",
    "compare_budgets": "Compare visual-token budgets",
    "chat": "Vision chat turn (tool choice)",
    "extract": "Extract structured data (JSON Schema)",
}

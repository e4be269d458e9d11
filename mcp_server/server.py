"""The MCP server: the vision core's operations as typed, documented tools.

Protocol glue only. Every tool validates nothing itself and computes nothing itself:
it hands plain values to ``tools.vision.Vision`` on a worker thread and turns the
structured result into MCP content (a short text, an image where there is one, and
structured content matching the tool's output schema).
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field, ValidationError

from tools.budgets import GEMMA4_BUDGETS
from tools.drawing import fit_for_client
from tools.errors import Busy, VlmError
from tools.images import AccessPolicy, ImageLoader
from tools.options import GenerationOptions
from tools.streaming import TextSink, streaming
from tools.results import ChatResult, CompareResult, DescribeResult, DetectResult, OcrResult, Result
from tools.vision import Vision

log = logging.getLogger("vlm_agent.server")

T = TypeVar("T")

IMAGE_REF = (
    "a local file path (inside the server's allowed folders), an http(s) URL, "
    "a data:image/...;base64 URI, or an image_id returned by an earlier call"
)


@dataclass
class Settings:
    model: str
    dtype: str = "auto"
    quantize: str | None = None
    #: static KV cache and compiled decoding (Gemma 4, CUDA)
    compile: bool = False
    #: folders the tools may read; None means the current directory
    allow_dirs: list[str] | None = None
    allow_private_urls: bool = False
    out_dir: Path = field(default_factory=lambda: default_out_dir())
    #: requests waiting for the model beyond this many get a "busy, retry" error
    max_queue: int = 16


def default_out_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("vlm-agent") / "outputs"


class Engine:
    """The resident model: loaded once, in the background, shared by every request."""

    def __init__(self, settings: Settings, load: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.policy = AccessPolicy.for_server(settings.allow_dirs, allow_private_urls=settings.allow_private_urls)
        self._load = load
        self._loaded = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        self.vision: Vision | None = None
        self.error: VlmError | None = None
        self.pending = 0

    def start(self) -> None:
        """Begin loading on a thread, so the server answers the handshake at once."""
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load_model, name="vlm-model-load", daemon=True).start()

    def _load_model(self) -> None:
        from tools.backends import load_backend

        try:
            # Only when asked: loaders passed in by tests need not know the flag.
            fast = {"compile": True} if self.settings.compile else {}
            backend = (self._load or load_backend)(
                self.settings.model, dtype=self.settings.dtype, quantize=self.settings.quantize, **fast
            )
            self.vision = Vision(backend, ImageLoader(self.policy))
        except VlmError as exc:
            log.error("could not load the model: %s", exc)
            self.error = exc
        except Exception:  # a crash in loading must still answer every call
            log.exception("loading %s failed", self.settings.model)
            self.error = VlmError(f"The model '{self.settings.model}' failed to load; see the server log.")
        finally:
            self._loaded.set()

    async def ready(self, ctx: Context | None = None) -> Vision:
        self.start()
        if not self._loaded.is_set():
            if ctx is not None:
                await ctx.report_progress(0, None, f"loading {self.settings.model}")
            await anyio.to_thread.run_sync(self._loaded.wait)
        if self.vision is None:
            raise self.error or VlmError("The model is not loaded.")
        return self.vision

    async def run(self, fn: Callable[..., T], *args: Any, stream_to: Context | None = None, total: int = 0) -> T:
        """Run ``fn`` on a worker thread, queued behind the model lock, bounded.

        With ``stream_to``, generated text reaches the caller as progress notifications
        (progress = tokens so far, total = ``total``, message = the new text), when the
        caller asked for progress.
        """
        if self.pending >= self.settings.max_queue:
            raise Busy(f"The server is busy with {self.pending} requests; retry in a few seconds.")
        sink = None if stream_to is None else text_sink(stream_to, total)

        def call() -> T:
            with streaming(sink):
                return fn(*args)

        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(call)
        finally:
            self.pending -= 1

    def output_path(self, kind: str) -> Path:
        return self.settings.out_dir / f"{kind}-{uuid.uuid4().hex[:12]}.png"


def text_sink(ctx: Context, total: int) -> TextSink:
    # report_progress is a no-op for callers that did not ask for progress.
    def sink(delta: str, tokens: int) -> None:
        anyio.from_thread.run(ctx.report_progress, tokens, total, delta)

    return sink


class HistoryTurn(BaseModel):
    """One earlier turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str = Field("", description="the turn's text")
    images: list[str] = Field(default_factory=list, description=f"the turn's images: each {IMAGE_REF}")


def options(max_new_tokens: int, temperature: float, top_p: float) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


def stats(result: Result) -> str:
    budget = f"budget {result.budget}, " if result.budget is not None else ""
    cut = " (cut at max_new_tokens)" if result.finish_reason == "length" else ""
    return (
        f"[{result.family}, {budget}{result.image_tokens} image tokens, {result.generated_tokens} tokens"
        f"{cut}, {result.timings.total_ms:.0f} ms; image_ids: {', '.join(result.image_ids)}]"
    )


def text_result(result: Result, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=f"{text}\n\n{stats(result)}")],
        structured_content=result.model_dump(mode="json"),
    )


def picture_result(text: str, picture: Path, structured: BaseModel) -> CallToolResult:
    from PIL import Image as PILImage

    with PILImage.open(picture) as full:
        png = fit_for_client(full.convert("RGB"))
    return CallToolResult(
        content=[TextContent(type="text", text=text), Image(data=png, format="png").to_image_content()],
        structured_content=structured.model_dump(mode="json"),
    )


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "arguments"
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"Argument '{where}': {first['msg']}{more}."


class VisionServer(MCPServer):
    """MCPServer whose tool errors are one sentence meant for the caller, never a traceback."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            message, code = explain(name, exc)
            # The code lets programs (the chat client) react without parsing the sentence.
            return CallToolResult(
                content=[TextContent(type="text", text=message)], structured_content={"error": code}, is_error=True
            )


def explain(tool: str, error: ToolError) -> tuple[str, str]:
    """The caller's sentence and error code for a failed tool call."""
    cause = error.__cause__
    if isinstance(cause, VlmError):
        return str(cause), cause.code
    if isinstance(cause, ValidationError):
        return validation_message(cause), "invalid_request"
    if cause is None:
        return str(error), "invalid_request"  # e.g. an unknown tool name
    log.error("tool %s crashed", tool, exc_info=cause)
    return f"The {tool} tool failed unexpectedly; the server logged the details and keeps serving.", "internal"


Budget = Annotated[
    int | None,
    Field(description="visual-token budget (Gemma 4): 70, 140, 280, 560 or 1120; more keeps finer detail; default 280"),
]
MaxNewTokens = Annotated[int, Field(description="cap on generated tokens; a cut answer says so")]
Temperature = Annotated[float, Field(description="0 decodes greedily; above 0 samples")]
TopP = Annotated[float, Field(description="nucleus sampling mass, used when temperature > 0")]


def build_server(settings: Settings, load: Callable[..., Any] | None = None) -> VisionServer:
    """The MCP server over one resident model; ``load`` replaces ``load_backend`` (tests)."""
    engine = Engine(settings, load)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[Engine]:
        engine.start()
        yield engine

    server = VisionServer(
        "vlm-agent",
        instructions=(
            "Vision tools over one resident vision-language model. Images are given as "
            f"{IMAGE_REF}. Every result returns image_ids: reuse them instead of sending an image again."
        ),
        lifespan=lifespan,
    )

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        # Docstrings are indented in source; clients show the description verbatim.
        return server.tool(description=inspect.cleandoc(fn.__doc__ or ""))(fn)

    @tool
    async def describe(
        images: Annotated[list[str], Field(description=f"one or more images; each {IMAGE_REF}")],
        ctx: Context,
        prompt: Annotated[str, Field(description="question or instruction; empty asks for a description")] = "",
        history: Annotated[
            list[HistoryTurn] | None,
            Field(description="earlier turns, oldest first, for follow-up questions"),
        ] = None,
        budget: Budget = None,
        max_new_tokens: MaxNewTokens = 512,
        temperature: Temperature = 0.0,
        top_p: TopP = 1.0,
    ) -> Annotated[CallToolResult, DescribeResult]:
        """Describe images or answer a question about them (captions, visual Q&A, comparisons, follow-ups).

        Pass several images to compare them; pass `history` to continue a conversation
        (earlier turns and their images are shown to the model in order).
        """
        vision = await engine.ready(ctx)
        turns = [turn.model_dump() for turn in history or []]
        result = await engine.run(
            vision.describe, images, prompt, turns, budget, options(max_new_tokens, temperature, top_p),
            stream_to=ctx, total=max_new_tokens,
        )
        return text_result(result, result.text)

    @tool
    async def ocr(
        image: Annotated[str, Field(description=IMAGE_REF)],
        ctx: Context,
        budget: Budget = None,
        max_new_tokens: MaxNewTokens = 512,
        temperature: Temperature = 0.0,
        top_p: TopP = 1.0,
    ) -> Annotated[CallToolResult, OcrResult]:
        """Read all text in an image, in reading order and in its original language and script.

        For small or dense text, a higher budget (560 or 1120) reads more accurately.
        """
        vision = await engine.ready(ctx)
        result = await engine.run(
            vision.ocr, image, budget, options(max_new_tokens, temperature, top_p), stream_to=ctx, total=max_new_tokens
        )
        return text_result(result, result.text)

    @tool
    async def detect(
        image: Annotated[str, Field(description=IMAGE_REF)],
        labels: Annotated[list[str], Field(description="what to find, e.g. ['person', 'car']")],
        ctx: Context,
        budget: Budget = None,
        max_new_tokens: MaxNewTokens = 512,
        temperature: Temperature = 0.0,
        top_p: TopP = 1.0,
    ) -> Annotated[CallToolResult, DetectResult]:
        """Find labelled objects: boxes [x1, y1, x2, y2] in pixels of the original image, plus an annotated picture.

        The full-size annotated PNG is saved on the server (annotated_path); the picture
        in the result is a downscaled copy.
        """
        vision = await engine.ready(ctx)
        out = engine.output_path("detect")
        detected = await engine.run(
            vision.detect, image, labels, budget, options(max_new_tokens, temperature, top_p), out
        )
        lines = [f"{d.label}: {d.box}" for d in detected.detections] or ["nothing found"]
        notes = [f"note: {n}" for n in detected.notes]
        text = "\n".join([f"{len(detected.detections)} detections", *lines, *notes, stats(detected)])
        return picture_result(text, out, detected)

    @tool
    async def compare_budgets(
        image: Annotated[str, Field(description=IMAGE_REF)],
        ctx: Context,
        prompt: Annotated[
            str, Field(description="the question (describe) or the comma-separated labels (detect); unused for ocr")
        ] = "",
        task: Annotated[Literal["describe", "ocr", "detect"], Field(description="which tool to compare")] = "describe",
        budgets: Annotated[list[int], Field(description="budgets to run, from 70, 140, 280, 560, 1120")] = list(
            GEMMA4_BUDGETS
        ),
        max_new_tokens: MaxNewTokens = 512,
    ) -> Annotated[CallToolResult, CompareResult]:
        """Run one image and prompt at several visual-token budgets and compare them side by side.

        Reports per budget the image tokens, output, timings and agreement with the
        highest budget, recommends the smallest budget that agrees, and returns one
        picture with every budget's result. Gemma 4 only.
        """
        vision = await engine.ready(ctx)
        out = engine.output_path("budgets")

        def progress(done: int, total: int, message: str) -> None:
            anyio.from_thread.run(ctx.report_progress, done, total, message)

        result = await engine.run(
            vision.compare_budgets, image, task, prompt, (), budgets,
            GenerationOptions(max_new_tokens=max_new_tokens), out, progress,
        )
        rows = [
            f"{run.budget:>5}  {run.image_tokens:>5} tokens  {run.timings.total_ms:>8.0f} ms  "
            f"agreement {run.agreement:.2f}"
            for run in result.runs
        ]
        text = "\n".join(
            [
                f"{task} at budgets {', '.join(str(r.budget) for r in result.runs)} ({result.metric} vs {result.reference_budget})",
                *rows,
                f"recommended budget: {result.recommended_budget} (agreement >= {result.threshold})",
            ]
        )
        return picture_result(text, out, result)

    @tool
    async def chat(
        message: Annotated[str, Field(description="the user's message")],
        ctx: Context,
        images: Annotated[list[str], Field(description=f"images of this message; each {IMAGE_REF}")] = [],  # noqa: B006
        history: Annotated[
            list[HistoryTurn] | None, Field(description="earlier turns, oldest first")
        ] = None,
        budget: Budget = None,
        max_new_tokens: MaxNewTokens = 256,
    ) -> Annotated[CallToolResult, ChatResult]:
        """One assistant turn of a vision chat: the model answers in text or picks vision tools to call.

        The model sees the conversation and declarations of describe, ocr, detect and
        compare_budgets, and answers through its native function calling; `tool_calls`
        lists the calls it chose (the caller runs them). Gemma 4 only: other families
        answer with an error, and the caller picks a tool itself.
        """
        vision = await engine.ready(ctx)
        turns = [turn.model_dump() for turn in history or []]
        result = await engine.run(
            vision.chat, images, message, turns, budget, GenerationOptions(max_new_tokens=max_new_tokens),
            stream_to=ctx, total=max_new_tokens,
        )
        calls = [f"call {c.name}({json.dumps(c.arguments)})" for c in result.tool_calls]
        return text_result(result, "\n".join([result.text, *calls]).strip() or "(no text)")

    @server.resource("vlm-agent://model", mime_type="application/json")
    async def model_info() -> str:
        """The resident model: id, family, budgets, context window and what it supports."""
        vision = await engine.ready()
        return json.dumps(vision.model_info())

    return server

"""The MCP server: the vision core's operations as typed, documented tools.

Protocol glue only. Each tool is a module-level typed function that reads the resident
``Engine`` from the lifespan context and goes through one helper (``run_tool``): wait for the
model, build the generation options, run the ``tools.vision.Vision`` call on a worker thread,
and return the structured result. The tool then only turns it into MCP content (a short
text, an image where there is one, and structured content matching its output schema).
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from tools.about import package_version
from tools.outputs import OutputLimits, picture_name, prune
from tools.boxes.detections import Detection
from tools.boxes.drawing import fit_for_client
from tools.errors import VlmError
from tools.inputs import AccessPolicy, ImageLoader, Limits
from tools.options import GenerationOptions
from tools.results import BudgetTimings, ChatResult, CompareResult, DescribeResult, DetectResult, OcrResult, Result
from tools.runtimes.engine import ApiSettings
from tools.scope import owned_by
from tools.runtimes.streaming import streaming
from tools.checks import MAX_IMAGES
from tools.vision import Vision

from . import completion, logs, pictures, prompts
from .admission import Admission, Signal, Turns
from .icons import icon
from .owners import Owner, Owners
from .progress import TextProgress

log = logging.getLogger("vlm_agent.server")

T = TypeVar("T")

IMAGE_REF = (
    "a local file path (inside the server's allowed folders), an http(s) URL, "
    "a data:image/...;base64 URI, or an image_id returned by an earlier call"
)


@dataclass
class Settings:
    #: hub id or local directory; "none" serves only the offline OCR engine
    model: str
    dtype: str = "auto"
    quantize: str | None = None
    #: run on this OpenAI-compatible engine instead of loading ``model`` here
    api: ApiSettings | None = None
    #: static KV cache and compiled decoding (Gemma 4, CUDA)
    compile: bool = False
    #: folders the tools may read; None means the current directory
    allow_dirs: list[str] | None = None
    allow_private_urls: bool = False
    out_dir: Path = field(default_factory=lambda: default_out_dir())
    #: what the output folder may hold; older and then oldest pictures go first
    out_limits: OutputLimits = field(default_factory=OutputLimits)
    #: requests waiting for the model beyond this many get a "busy, retry" error
    max_queue: int = 16
    #: per-image caps: bytes, pixels, download time, redirects
    limits: Limits = field(default_factory=Limits)


def default_out_dir() -> Path:
    # The chat saves its pictures in the same folder.
    from tools.paths import outputs_dir

    return outputs_dir()


class Engine:
    """The resident model: loaded once, in the background, shared by every request."""

    def __init__(self, settings: Settings, load: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.policy = AccessPolicy.for_server(
            settings.allow_dirs, allow_private_urls=settings.allow_private_urls, limits=settings.limits
        )
        # One image store for the model and the offline OCR, so image_ids work across both;
        # an id is found only by the owner that loaded its image (tools.scope).
        self.loader = ImageLoader(self.policy)
        #: who owns what: one owner on stdio, one per session over HTTP
        self.owners = Owners()
        #: what works with no model: ocr with engine "rapidocr", even while the model loads or if it failed
        self.offline = Vision(None, self.loader)
        self._load = load
        self._loaded = Signal()
        self._started = False
        self._lock = threading.Lock()
        self.vision: Vision | None = None
        self.error: VlmError | None = None
        #: requests waiting for the load, queued for the model or running, bounded by max_queue
        self.admission = Admission(settings.max_queue)
        #: turns at the loaded model (one for a local model, --max-concurrency on an engine)
        self.turns: Turns | None = None
        self.began = time.monotonic()
        #: seconds the load took, once it is over
        self.load_s: float | None = None

    def start(self) -> None:
        """Begin loading on a thread, so the server answers the handshake at once."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self.began = time.monotonic()
        threading.Thread(target=self._load_model, name="vlm-model-load", daemon=True).start()

    @property
    def pending(self) -> int:
        return self.admission.pending

    @property
    def what(self) -> str:
        """The model, as progress and log lines name it."""
        api = self.settings.api
        return self.settings.model if api is None else f"{api.model} at {api.root}"

    def _load_model(self) -> None:
        from tools.model import NO_MODEL, load_model

        try:
            # Only when asked: loaders passed in by tests need not know the flag.
            fast = {"compile": True} if self.settings.compile else {}
            model = (self._load or load_model)(
                self.settings.model, dtype=self.settings.dtype, quantize=self.settings.quantize,
                api=self.settings.api, **fast,
            )
            self.turns = Turns(max(1, model.max_concurrency))
            self.vision = Vision(model, self.loader)
        except VlmError as exc:
            if self.settings.model == NO_MODEL and self.settings.api is None:
                log.info("no model loaded (--model none): only ocr with engine 'rapidocr' works")
            else:
                log.error("could not load the model: %s", exc)
            self.error = exc
        except Exception:  # a crash in loading must still answer every call
            log.exception("loading %s failed", self.what)
            self.error = VlmError(f"The model '{self.what}' failed to load; see the server log.")
        finally:
            self.load_s = time.monotonic() - self.began
            self._loaded.set()

    async def ready(self, ctx: Context | None = None) -> Vision:
        self.start()
        if not self._loaded.is_set():
            # A place in the queue while waiting (Busy past the bound), waiting on the event loop.
            with self.admission.place():
                if ctx is not None:
                    await ctx.report_progress(0, None, f"loading {self.what}")
                await logs.notify(ctx, "info", f"waiting for {self.what} to load ({time.monotonic() - self.began:.0f} s so far)")
                await self._loaded.wait()
                if self.vision is not None:
                    await logs.notify(ctx, "info", f"{self.what} loaded in {self.load_s:.1f} s")
        if self.vision is None:
            error = self.error or VlmError("The model is not loaded.")
            await logs.notify(ctx, "error", f"no model to run on: {error}")
            raise error
        return self.vision

    async def run(
        self, call: Callable[[threading.Event], T], stream_to: Context | None = None, total: int = 0,
        model: bool = True, images: Sequence[str] = (), owner: Owner | None = None,
    ) -> T:
        """Run ``call(cancel)`` on a worker thread once it has a turn at the model (``model``),
        waited for on the event loop; bounded.

        When the caller cancels or hangs up, ``cancel`` is set: a request still waiting for its
        turn gives up, and a generation stops at its next token. Its place in ``pending``
        comes back at once; its turn only once its thread has let go of the model, so the next
        request finds the model free. With ``stream_to``, generated text reaches the
        caller as progress notifications (progress = tokens so far, total = ``total``,
        message = the new text, sent every few tens of milliseconds by ``TextProgress``, so that
        no decoding step waits for the event loop). The work runs as ``owner``'s (default: the
        one owner there is while the server has one client): it finds only that owner's images
        and cached work.
        """
        sink = None if stream_to is None else TextProgress(stream_to, total)
        turns = self.turns if model else None
        # The call's URL images are fetched before its turn at the model (``images``: every
        # reference it names, history included), unless there are more than it may send.
        ahead: dict[str, Any] = {}
        fetch = list(images) if turns is not None and 0 < len(images) <= MAX_IMAGES else []
        scope = (owner or self.owners.of(None)).scope

        def prepare(cancel: threading.Event) -> None:
            with owned_by(scope):
                ahead.update(self.loader.fetch_ahead(fetch))

        def streamed(cancel: threading.Event) -> T:
            with streaming(sink), owned_by(scope), self.loader.prefetched(ahead):
                return call(cancel)

        if sink is None:
            return await self.admission.run(streamed, turns, prepare if fetch else None)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(sink.run)
                try:
                    return await self.admission.run(streamed, turns, prepare if fetch else None)
                finally:
                    sink.close()  # the rest of the text goes out before the result does
        except BaseExceptionGroup as group:
            # The call's own error (a VlmError, say), as it would be raised without the sender beside it.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    def output_path(self, kind: str, owner: Owner) -> Path:
        """A new picture's path; ``owner`` alone may read it back or complete its name."""
        # Room first: the folder never grows past its limits by more than the new picture.
        prune(self.settings.out_dir, self.settings.out_limits)
        name = picture_name(kind)
        owner.pictures.add(name)
        return self.settings.out_dir / name


class HistoryTurn(BaseModel):
    """One earlier turn of the conversation."""

    role: Literal["user", "assistant"]
    content: str = Field("", description="the turn's text")
    images: list[str] = Field(default_factory=list, description=f"the turn's images: each {IMAGE_REF}")


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


UNION_BRANCHES = {"int", "str", "float", "bool", "none"}


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    # An argument that takes one of several types (budget: a number or "auto") adds the type
    # it tried to the place ("budget.int"); the caller named only the argument.
    where = ".".join(str(part) for part in first["loc"] if str(part) not in UNION_BRANCHES and "[" not in str(part))
    where = where or "arguments"
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"Argument '{where}': {first['msg']}{more}."


class VisionServer(MCPServer):
    """MCPServer whose tool errors are one sentence meant for the caller, never a traceback."""

    engine: Engine

    async def run_stdio_async(self) -> None:
        # Our stdio transport answers every line, even one the SDK's parser would drop silently.
        from .stdio import serve_stdio

        await serve_stdio(self)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None) -> Any:
        known = sorted(tool.name for tool in await self.list_tools())
        if name not in known:
            # repr keeps a hostile name on one line; the list makes the error actionable.
            return error_result(f"Unknown tool {name[:40]!r}; use one of {', '.join(known[:-1])} or {known[-1]}.")
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            refused = error_result(*explain(name, exc))
            await logs.notify(context, "warning", f"{name} refused: {refused.content[0].text}")  # type: ignore[union-attr]
            return refused
        if context is not None:
            # Labels of calls that worked, for completing new ones: the caller's own.
            owner_of(context).remember(name, arguments)
        if isinstance(result, CallToolResult):
            await logs.after_call(context, name, result.structured_content)
        return result

    async def get_prompt(self, name: str, arguments: dict[str, Any] | None = None, context: Context | None = None) -> Any:
        prompts.check(await self.list_prompts(), name, arguments)
        return await super().get_prompt(name, arguments, context)


#: where a tool error's code (and the argument it is about) travel, in the result's ``_meta``
ERROR_META = "vlm-agent/error"


def error_result(message: str, code: str = "invalid_request", param: str | None = None) -> CallToolResult:
    """A tool error: the sentence as text, the code for programs (the chat client) in ``_meta``.

    No structured content: TypeScript clients (the Inspector, Claude Code, VS Code, Cursor) check it
    against the tool's output schema even on an error and would show that failure instead of the
    sentence, and clients that hand their model only the structured content would hide the sentence.
    """
    error: dict[str, Any] = {"code": code}
    if param is not None:
        error["param"] = param
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True, _meta={ERROR_META: error})


def explain(tool: str, error: ToolError) -> tuple[str, str, str | None]:
    """The caller's sentence, error code and the argument it is about, for a failed tool call."""
    cause = error.__cause__
    if isinstance(cause, VlmError):
        # Worded with the tools' argument names, which is how the core names its parameters.
        return cause.worded(), cause.code, cause.param
    if isinstance(cause, ValidationError):
        where = cause.errors()[0]["loc"]
        return validation_message(cause), "invalid_request", str(where[0]) if where else None
    if cause is None:
        return str(error), "invalid_request", None  # e.g. an unknown tool name
    log.error("tool %s crashed", tool, exc_info=cause)
    return f"The {tool} tool failed unexpectedly; the server logged the details and keeps serving.", "internal", None


def _budget_value(value: Any) -> Any:
    """'auto' in any case or spacing, as the CLI takes it; true/false are not budgets (lax ints would make them 1/0)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or (isinstance(value, str) and not value.strip().isdigit()):
        raise PydanticCustomError("budget", "Input should be a budget number or 'auto'")
    return value


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
        "boxes come back in pixels of the whole image"
    ),
]
History = Annotated[
    list[HistoryTurn] | None,
    Field(
        description="earlier turns, oldest first, always as structured turns: the server folds them into the "
        "prompt the way the model's family keeps context, and says in notes what it left out"
    ),
]

R = TypeVar("R")


def engine_of(ctx: Context) -> Engine:
    """The resident engine, which the server's lifespan put in the request context."""
    return ctx.request_context.lifespan_context


def owner_of(ctx: Context) -> Owner:
    """Who the request belongs to: its session over HTTP, the one client on stdio."""
    # A tool called on its own (a context with no session) is the one client's.
    return engine_of(ctx).owners.of(getattr(ctx.request_context, "session", None))


async def run_tool(
    ctx: Context,
    work: Callable[[Vision, GenerationOptions], R],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stream: bool = False,
    model: bool = True,
    images: Sequence[str] = (),
) -> R:
    """What every tool does around its call: wait for the model (``model=False``: the offline
    reader), build the options, run ``work`` on a worker thread with cancellation (and the
    generated text streamed as progress with ``stream``), and hand back its result. ``images``
    names every image reference the work reads, so URLs among them are fetched before its turn."""
    engine = engine_of(ctx)
    # Both hold a queue place; nothing awaits between them, so no call slips in at the handover.
    vision = await engine.ready(ctx) if model else engine.offline
    chosen = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    return await engine.run(
        lambda cancel: work(vision, chosen.with_cancel(cancel)), stream_to=ctx if stream else None, total=max_new_tokens,
        model=model, images=images, owner=owner_of(ctx),
    )


def turns_of(history: list[HistoryTurn] | None) -> list[dict[str, Any]]:
    return [turn.model_dump() for turn in history or []]


def history_images(history: list[HistoryTurn] | None) -> list[str]:
    return [ref for turn in history or [] for ref in turn.images or []]


async def describe(
    images: Annotated[list[str], Field(description=f"one or more images; each {IMAGE_REF}")],
    ctx: Context,
    prompt: Annotated[str, Field(description="question or instruction; empty asks for a description")] = "",
    history: History = None,
    budget: Budget = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
) -> Annotated[CallToolResult, DescribeResult]:
    """Describe images or answer a question about them (captions, visual Q&A, comparisons, follow-ups).

    Pass several images to compare them; pass `history` to continue a conversation: the server
    keeps the context the way the model's family does (vlm-agent://model says how) and lists in
    `notes` what it had to leave out.
    """
    result = await run_tool(
        ctx, lambda vision, chosen: vision.describe(images, prompt, turns_of(history), budget, chosen),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stream=True,
        images=[*images, *history_images(history)],
    )
    return text_result(result, result.text)


async def ocr(
    image: ImageRef,
    ctx: Context,
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
    tiles: Tiles = "off",
) -> Annotated[CallToolResult, OcrResult]:
    """Read all text in an image, in reading order and in its original language and script.

    For small or dense text, a higher budget (560 or 1120) reads more accurately.
    engine 'rapidocr' reads printed text offline without the model and returns line boxes.
    """
    result = await run_tool(
        ctx, lambda vision, chosen: vision.ocr(image, budget, chosen, engine, tiles),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stream=True, model=engine == "vlm",
        images=[image],
    )
    return text_result(result, result.text)


async def detect(
    image: ImageRef,
    labels: Annotated[list[str], Field(description="what to find, e.g. ['person', 'car']")],
    ctx: Context,
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
) -> Annotated[CallToolResult, DetectResult]:
    """Find labelled objects: boxes [x1, y1, x2, y2] in pixels of the original image, plus an annotated picture.

    The full-size annotated PNG is saved on the server (annotated_path); the picture
    in the result is a downscaled copy.
    """
    # Pruning the output folder touches every file in it: off the event loop too.
    out = await anyio.to_thread.run_sync(engine_of(ctx).output_path, "detect", owner_of(ctx))
    detected = await run_tool(
        ctx, lambda vision, chosen: vision.detect(image, labels, budget, chosen, out, tiles, consensus, verify),
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, images=[image],
    )
    lines = [box_line(d) for d in detected.detections] or ["nothing found"]
    text = "\n".join([f"{len(detected.detections)} detections", *lines, *noted(detected.notes), stats(detected)])
    # Decoding and scaling a big picture is CPU work: off the event loop, so pings and other calls go on.
    return await anyio.to_thread.run_sync(picture_result, text, out, detected)


async def compare_budgets(
    image: ImageRef,
    ctx: Context,
    prompt: Annotated[
        str, Field(description="the question (describe) or the comma-separated labels (detect); unused for ocr")
    ] = "",
    task: Annotated[Literal["describe", "ocr", "detect"], Field(description="which tool to compare")] = "describe",
    budgets: Annotated[
        list[int] | None, Field(description="budgets to run, from the model's budgets; empty: all of them")
    ] = None,
    max_new_tokens: MaxNewTokens = 512,
) -> Annotated[CallToolResult, CompareResult]:
    """Run one image and prompt at several visual-token budgets and compare them side by side.

    Reports per budget the image tokens, output, timings and agreement with the
    highest budget, recommends the smallest budget that agrees, and returns one
    picture with every budget's result. Families with budgets only (vlm-agent://model lists them).
    """
    out = await anyio.to_thread.run_sync(engine_of(ctx).output_path, "budgets", owner_of(ctx))

    def progress(done: int, total: int, message: str) -> None:
        anyio.from_thread.run(ctx.report_progress, done, total, message)

    result = await run_tool(
        ctx, lambda vision, chosen: vision.compare_budgets(image, task, prompt, (), budgets, chosen, out, progress),
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
    ctx: Context,
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
        ctx, lambda vision, chosen: vision.chat(images, message, turns_of(history), budget, chosen),
        max_new_tokens=max_new_tokens, stream=True, images=[*images, *history_images(history)],
    )
    calls = [f"call {c.name}({json.dumps(c.arguments)})" for c in result.tool_calls]
    return text_result(result, "\n".join([result.text, *calls]).strip() or "(no text)")


#: every tool the server offers, in the order clients list them
TOOLS = (describe, ocr, detect, compare_budgets, chat)


#: what clients show for each tool
TITLES = {
    "describe": "Describe images",
    "ocr": "Read text (OCR)",
    "detect": "Detect objects",
    "compare_budgets": "Compare visual-token budgets",
    "chat": "Vision chat turn (tool choice)",
}


def build_server(settings: Settings, load: Callable[..., Any] | None = None) -> VisionServer:
    """The MCP server over one resident model; ``load`` replaces ``load_model`` (tests)."""
    resident = Engine(settings, load)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[Engine]:
        resident.start()
        yield resident

    server = VisionServer(
        "vlm-agent",
        title="vlm-agent: vision-language model tools",
        version=package_version(),
        icons=icon("server"),
        instructions=(
            "Vision tools over one resident vision-language model. Images are given as "
            f"{IMAGE_REF}. Every result returns image_ids: reuse them instead of sending an image again. "
            "vlm-agent://model says what the model can do: tasks, budgets, and how it keeps a conversation's context."
        ),
        lifespan=lifespan,
    )
    server.engine = resident
    # logging/setLevel is a request the SDK's MCPServer does not route itself.
    logs.install(server._lowlevel_server)  # noqa: SLF001
    pictures.register(server, settings.out_dir, resident.owners)
    prompts.register(server)
    completion.register(server, resident, settings.out_dir)
    for tool in TOOLS:
        # Docstrings are indented in source; clients show the description verbatim.
        server.tool(
            description=inspect.cleandoc(tool.__doc__ or ""), title=TITLES[tool.__name__], icons=icon(tool.__name__)
        )(tool)

    @server.resource("vlm-agent://model", mime_type="application/json")
    async def model_info() -> str:
        """The resident model: family, tasks, budgets, context policy and limits."""
        try:
            vision = await resident.ready()
        except VlmError as exc:
            raise ResourceError(str(exc)) from None  # the reason reaches the client, not "Error reading resource"
        return json.dumps(vision.model_info())

    return server

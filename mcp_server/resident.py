"""The resident model: its settings, its load in the background, and the turns requests take at it.

``Resident`` is built once per server and shared by every request: the image loader and its
store, who owns what (``owners``), the offline OCR (which needs no model), the bounded queue
(``admission``) and, once loaded, the ``tools.vision.Vision`` over the model. The server's
lifespan hands requests a ``State`` that holds it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context

from tools.checks import MAX_IMAGES
from tools.errors import VlmError
from tools.inputs import AccessPolicy, ImageLoader, Limits
from tools.outputs import OutputLimits, picture_name, prune
from tools.progress import Reporter, reporting
from tools.runtimes.api import ApiSettings
from tools.runtimes.streaming import streaming
from tools.scope import owned_by
from tools.vision import Vision

from . import logs
from .admission import Admission, Signal, Turns
from .owners import Owner, Owners
from .progress import TextProgress

log = logging.getLogger("vlm_agent.server")

T = TypeVar("T")


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


class Resident:
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
        model: bool = True, images: Sequence[str] = (), owner: Owner | None = None, progress_to: Context | None = None,
    ) -> T:
        """Run ``call(cancel)`` on a worker thread once it has a turn at the model (``model``),
        waited for on the event loop; bounded.

        When the caller cancels or hangs up, ``cancel`` is set: a request still waiting for its
        turn gives up, and a generation stops at its next token. Its place in ``pending``
        comes back at once; its turn only once its thread has let go of the model, so the next
        request finds the model free. With ``stream_to``, generated text reaches the
        caller as progress notifications (progress = tokens so far, total = ``total``,
        message = the new text, sent every few tens of milliseconds by ``TextProgress``, so that
        no decoding step waits for the event loop). The work runs as ``owner``'s (default: the one owner there is
        while the server has one client): it finds only that owner's images and cached work.
        With ``progress_to``, each finished page or frame of a PDF or clip is a progress notification.
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
            with streaming(sink), reporting(part_reporter(progress_to)), owned_by(scope), self.loader.prefetched(ahead):
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


@dataclass(frozen=True)
class State:
    """What the server's lifespan hands every request (``ctx.request_context.lifespan_context``)."""

    resident: Resident


def part_reporter(ctx: Context | None) -> Reporter | None:
    """Pages and frames finished, as progress notifications (done counts up; the message is what the part gave)."""
    if ctx is None:
        return None

    def report(done: int, total: int, message: str, finished: bool) -> None:
        if finished:
            anyio.from_thread.run(ctx.report_progress, done, total, message)

    return report


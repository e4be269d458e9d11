"""What every tool does around its call, shared by the tools in ``handlers`` and the tool modules
beside it (``extract_tool``): find the resident model and the caller, and run the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
from mcp.server.mcpserver import Context

from tools.options import GenerationOptions
from tools.vision import Vision

from .owners import Owner
from .resident import Resident, State

R = TypeVar("R")


def resident_of(ctx: Context[State]) -> Resident:
    """The resident model, which the server's lifespan put in the request context."""
    return ctx.request_context.lifespan_context.resident


def owner_of(ctx: Context[State]) -> Owner:
    """Who the request belongs to: its session over HTTP, the one client on stdio."""
    # A tool called on its own (a context with no session) is the one client's.
    return resident_of(ctx).owners.of(getattr(ctx.request_context, "session", None))


def progress_to(ctx: Context[State]) -> Callable[[int, int, str], None]:
    """A job's steps (compare_budgets' budgets, extract's stages) as progress notifications, from its
    worker thread; a no-op for callers that did not ask for progress."""

    def progress(done: int, total: int, message: str) -> None:
        anyio.from_thread.run(ctx.report_progress, done, total, message)

    return progress


async def run_tool(
    ctx: Context[State],
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
    resident = resident_of(ctx)
    # Both hold a queue place; nothing awaits between them, so no call slips in at the handover.
    vision = await resident.ready(ctx) if model else resident.offline
    chosen = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    return await resident.run(
        lambda cancel: work(vision, chosen.with_cancel(cancel)), stream_to=ctx if stream else None, total=max_new_tokens,
        model=model, images=images, owner=owner_of(ctx), progress_to=ctx,
    )

"""Progress of long jobs (pages of a PDF, frames of a clip), without threading a callback through every layer.

Whoever runs a call opens ``reporting(reporter)`` around it, like ``tools.runtimes.streaming``'s sink:
the MCP server sends notifications, the CLI prints a line on stderr. Two kinds of report reach it:
``step`` (preparing: a page rendered, a frame decoded) and ``finished`` (one page or frame done, with
what it gave); only ``finished`` counts up over the whole job, which MCP progress needs. A context
variable follows the call into its worker thread, and concurrent calls never see each other's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: ``reporter(done, total, message, finished)``
Reporter = Callable[[int, int, str, bool], None]

_reporter: ContextVar[Reporter | None] = ContextVar("vlm_agent_progress", default=None)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def step(done: int, total: int, message: str) -> None:
    """Preparing the job's pictures (rendering, decoding): shown to a person, not counted."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(done, total, message, False)


def finished(done: int, total: int, message: str) -> None:
    """``done`` of ``total`` pages or frames are finished; ``message`` says what the last one gave."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(done, total, message, True)

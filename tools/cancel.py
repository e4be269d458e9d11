"""The running request's cancel event, reachable from blocking work deep in the core.

Whoever runs a request (the MCP server) opens ``cancellable(event)`` around the core call; a
wait that may last seconds (an image download) finds the event here instead of having it
threaded through every layer, and gives up soon after it is set. Like ``tools.streaming``, it
is a context variable, so two concurrent requests never see each other's event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from .errors import Cancelled

#: how often a blocking wait looks whether its request was cancelled
POLL_S = 0.05

_event: ContextVar[threading.Event | None] = ContextVar("vlm_agent_cancel", default=None)


@contextmanager
def cancellable(event: threading.Event | None) -> Iterator[None]:
    token = _event.set(event)
    try:
        yield
    finally:
        _event.reset(token)


def cancelled() -> bool:
    event = _event.get()
    return event is not None and event.is_set()


def check() -> None:
    if cancelled():
        raise Cancelled("The request was cancelled before it finished; send it again if it is still wanted.")


def wait(done: threading.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``done``, like ``done.wait``, but raise ``Cancelled``
    as soon as the running request is cancelled."""
    event = _event.get()
    if event is None:
        return done.wait(max(0.0, timeout))
    deadline = time.monotonic() + timeout
    while True:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            return done.is_set()
        if done.wait(min(POLL_S, left)):
            return True

"""The running request's cancel event, reachable from blocking work deep in the core.

Whoever runs a request (the MCP server) opens ``cancellable(event)`` around the core call; a
wait that may last seconds (an image download) finds the event here instead of having it
threaded through every layer, and gives up soon after it is set. Like ``tools.runtimes.streaming``, it
is a context variable, so two concurrent requests never see each other's event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
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


def current() -> threading.Event | None:
    """The running request's cancel event, if it runs under one."""
    return _event.get()


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


@contextmanager
def on_cancel(event: threading.Event | None, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` (on a watcher thread) as soon as ``event`` is set while the block runs: what
    unblocks work stuck in a read that no check between its steps would reach, such as shutting
    down the socket an engine's answer comes on."""
    if event is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if event.wait(POLL_S):
                if not done.is_set():
                    action()
                return

    watcher = threading.Thread(target=watch, name="vlm-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()

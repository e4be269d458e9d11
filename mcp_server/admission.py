"""Who gets in, and how they wait: the bounded queue in front of the resident model.

Every request that waits (for the model to load, for its turn at the model) or runs holds
one place; past ``max_queue`` places a call is told ``Busy`` at once, so waiting requests
cannot pile up memory. The wait for the model's load sits on the event loop, in no worker
thread: a crowd waiting for a slow load must not use up the threads that work needing no model
(the offline OCR) runs on. A cancelled caller gives its place back as soon as its work has let
go, image downloads included (``tools.cancel``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
from anyio.lowlevel import EventLoopToken, current_token

from tools.cancel import cancellable
from tools.errors import Busy, Cancelled

T = TypeVar("T")


class Signal:
    """A one-time event set from any thread and awaited on an event loop without a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._waiters: list[tuple[anyio.Event, EventLoopToken]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
            waiters, self._waiters = self._waiters, []
        here = _loop_here()
        for event, token in waiters:
            if token.native_token is here:
                event.set()
                continue
            try:
                anyio.from_thread.run_sync(event.set, token=token)
            except RuntimeError:
                pass  # that loop has ended: nobody waits on it any more

    async def wait(self) -> None:
        with self._lock:
            if self._set:
                return
            entry = (anyio.Event(), current_token())
            self._waiters.append(entry)
        try:
            await entry[0].wait()
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)


def _loop_here() -> object | None:
    """The event loop running on this thread, if any."""
    try:
        return current_token().native_token
    except RuntimeError:
        return None


class Admission:
    """The count of requests waiting or running, bounded by ``max_queue``."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.pending = 0

    @contextmanager
    def place(self) -> Iterator[None]:
        """Hold one place for the block, or raise ``Busy`` at once when none is free.

        Taking and giving back never await, so a request that moves from waiting for the load
        to its turn at the model gives one place back and takes the next without another
        request slipping in between."""
        if self.pending >= self.max_queue:
            raise Busy(f"The server is busy with {self.pending} requests; retry in a few seconds.")
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def run(self, call: Callable[[threading.Event], T]) -> T:
        """Run ``call(cancel)`` on a worker thread, holding a place until its thread lets go.

        When the caller cancels or hangs up, ``cancel`` is set (and is the running request's
        event in ``tools.cancel``): a request still waiting for the model gives up, an image
        download stops, and a generation stops at its next token.
        """
        with self.place():
            job = Job(call)
            try:
                return await anyio.to_thread.run_sync(job.run, abandon_on_cancel=True)
            except anyio.get_cancelled_exc_class():
                if job.stop():
                    # The place is given back only once the thread has let go of the model.
                    with anyio.CancelScope(shield=True):
                        await job.finished.wait()
                raise


class Job:
    """One request's work for a worker thread, which the event loop can stop."""

    def __init__(self, call: Callable[[threading.Event], Any]) -> None:
        self.call = call
        self.cancel = threading.Event()
        self.finished = Signal()
        self._lock = threading.Lock()
        self._started = False

    def run(self) -> Any:
        with self._lock:
            # Cancelled before a thread picked it up: it never touches the model.
            if self.cancel.is_set():
                raise Cancelled("The request was cancelled before it started.")
            self._started = True
        try:
            with cancellable(self.cancel):
                return self.call(self.cancel)
        finally:
            self.finished.set()

    def stop(self) -> bool:
        """Ask the work to stop; True when it had started, so there is a thread to wait for."""
        with self._lock:
            self.cancel.set()
            return self._started

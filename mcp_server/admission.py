"""Who gets in, and how they wait: the bounded queue in front of the resident model.

Every request that waits (for the model to load, for its turn at the model) or runs holds
one place; past ``max_queue`` places a call is told ``Busy`` at once, so waiting requests
cannot pile up memory. Both waits sit on the event loop, in no worker thread: a crowd waiting
for a slow load or a busy model must not use up the threads that work needing no model (the
offline OCR) runs on. A call gets its turn (``Turns``) before its work goes to a thread, so
only the calls that hold a turn have a thread. A cancelled caller (``notifications/cancelled``,
or a hang-up, which the HTTP transport turns into one) gives its place back at once, so the
callers after it wait for the model instead of being told it is busy; its turn comes back
once its thread has let go of the model (``tools.cancel`` asks the work to stop).
"""

from __future__ import annotations

import threading
from collections import deque
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
        for event, token in waiters:
            _set(event, token)

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


class Turns:
    """Turns at the model: at most ``count`` holders (1 for a local model), the rest waiting in
    order on the event loop without a thread. Released from the task that acquired."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._lock = threading.Lock()
        self._held = 0
        self._waiters: deque[tuple[anyio.Event, EventLoopToken]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        with self._lock:
            if self._held < self.count and not self._waiters:
                self._held += 1
                return
            entry = (anyio.Event(), current_token())
            self._waiters.append(entry)
        try:
            await entry[0].wait()
        except BaseException:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                    raise
            # Cancelled just as the turn was handed over: hand it on.
            self.release()
            raise

    def release(self) -> None:
        with self._lock:
            if not self._waiters:
                self._held -= 1
                return
            # Handed straight to the next in line, so nobody arriving now jumps the queue.
            event, token = self._waiters.popleft()
        _set(event, token)


def _set(event: anyio.Event, token: EventLoopToken) -> None:
    """Set an event of the loop ``token`` names, from that loop or any other thread."""
    if token.native_token is _loop_here():
        event.set()
        return
    try:
        anyio.from_thread.run_sync(event.set, token=token)
    except RuntimeError:
        pass  # that loop has ended: nobody waits on it any more


def _loop_here() -> object | None:
    """The event loop running on this thread, if any."""
    try:
        return current_token().native_token
    except RuntimeError:
        return None


class Place:
    """One place in the queue, given back once however often ``release`` is called."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.admission.pending -= 1


class Admission:
    """The count of requests waiting or running, bounded by ``max_queue``."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.pending = 0

    @contextmanager
    def place(self) -> Iterator[Place]:
        """Hold one place for the block (or until it is released), or raise ``Busy`` at once when none is free.

        Taking and giving back never await, so a request that moves from waiting for the load
        to its turn at the model gives one place back and takes the next without another
        request slipping in between."""
        if self.pending >= self.max_queue:
            raise Busy(f"The server is busy with {self.pending} requests; retry in a few seconds.")
        self.pending += 1
        held = Place(self)
        try:
            yield held
        finally:
            held.release()

    async def run(
        self, call: Callable[[threading.Event], T], turns: Turns | None = None,
        prepare: Callable[[threading.Event], object] | None = None,
    ) -> T:
        """Run ``call(cancel)`` on a worker thread, holding a place until its thread lets go;
        with ``turns``, only once it has a turn, waited for on the event loop. ``prepare(cancel)``
        runs on a worker thread first, before the turn (fetching images the call needs), so
        it holds up no other call.

        When the caller cancels or hangs up, ``cancel`` is set (and is the running request's
        event in ``tools.cancel``): a request still waiting for its turn gives up, an image
        download stops, and a generation stops at its next token. Its place is given back at
        once; its turn once its thread has let go, so the model never runs two calls at once.
        """
        with self.place() as place:
            if prepare is not None:
                await _on_thread(prepare, place.release)
            if turns is not None:
                await turns.acquire()
            try:
                return await _on_thread(call, place.release)
            finally:
                if turns is not None:
                    turns.release()


async def _on_thread(call: Callable[[threading.Event], T], on_cancel: Callable[[], None] = lambda: None) -> T:
    """``call(cancel)`` on a worker thread; cancelled, it is asked to stop, ``on_cancel`` runs at
    once, and the thread is waited for."""
    job = Job(call)
    try:
        return await anyio.to_thread.run_sync(job.run, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        # The caller is gone: its place goes to the next caller now, whatever the work still does.
        on_cancel()
        if job.stop():
            # The turn is given back only once the thread has let go of the model.
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

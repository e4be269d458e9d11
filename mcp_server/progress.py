"""Generated text to the client as progress notifications, without holding up the generation.

The model generates on a worker thread; progress is sent on the event loop. Handing each token's
text over and waiting for the loop to send it made every decoding step wait for the loop thread
to be scheduled, which on a busy machine costs more than the step itself. Here the worker only
appends the text under a lock; a task on the loop sends what has gathered every ``INTERVAL_S``
(several pieces as one notification, their text joined) and the rest when the call ends, before
its result.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import anyio

log = logging.getLogger("vlm_agent")

#: how often the gathered text goes out: quicker than a reader notices, far slower than a token
INTERVAL_S = 0.05


class TextProgress:
    """A text sink for ``tools.runtimes.streaming`` that feeds one call's progress notifications."""

    def __init__(self, ctx: Any, total: int) -> None:
        self.ctx = ctx
        self.total = total
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._tokens = 0
        self._done = anyio.Event()
        self._broken = False

    def __call__(self, delta: str, tokens: int) -> None:
        """From the worker thread: keep the piece for the next send."""
        with self._lock:
            self._pieces.append(delta)
            self._tokens = tokens

    async def run(self) -> None:
        """On the loop, beside the call: send what gathered, until ``close`` and then the rest."""
        while True:
            done = self._done.is_set()
            await self.send()
            if done:
                return
            with anyio.move_on_after(INTERVAL_S):
                await self._done.wait()

    def close(self) -> None:
        """On the loop, once the call has ended: ``run`` sends the rest and returns."""
        self._done.set()

    async def send(self) -> None:
        with self._lock:
            pieces, self._pieces = self._pieces, []
            tokens = self._tokens
        if not pieces or self._broken:
            return
        try:
            await self.ctx.report_progress(tokens, self.total, "".join(pieces))
        except Exception as exc:  # a client gone mid-answer: the call itself learns it from its transport
            self._broken = True
            log.debug("progress not sent: %s", exc)

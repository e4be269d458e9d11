"""Whose request this is: what one caller made stays that caller's.

The MCP server serves many clients over HTTP, and what one of them sent must not reach
another. It runs each request inside ``owned_by(scope)``, one ``Scope`` per client session.
Deep in the core, the image loader then resolves an image_id only for a scope that loaded
the image itself (from its bytes, a path or a URL), and the caches keep what they keep per
scope, so that a cache hit never tells one caller what another sent. Like
``tools.cancel``, the running request's scope is a context variable: concurrent requests
never see each other's. Outside any scope (the CLI, the benchmarks, tests in process)
everything belongs to one owner, as before.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: image ids one scope remembers; past it the least recently used is forgotten (sent again, it is known again)
MOST_IMAGES = 4096


class Scope:
    """One owner of images and cached work: a client session, or the one client of stdio."""

    def __init__(self, most_images: int = MOST_IMAGES) -> None:
        #: what the caches tag their entries with: a string, so that no cache keeps a scope alive
        self.key = uuid.uuid4().hex
        self.most_images = most_images
        self._images: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def know(self, image_id: str) -> None:
        """``image_id`` was loaded in this scope: from now on it may name it."""
        with self._lock:
            self._images.pop(image_id, None)
            self._images[image_id] = None
            while len(self._images) > self.most_images:
                self._images.popitem(last=False)

    def knows(self, image_id: str) -> bool:
        with self._lock:
            if image_id not in self._images:
                return False
            self._images.move_to_end(image_id)
            return True

    def image_ids(self) -> list[str]:
        """The ids this scope may name, most recently used first."""
        with self._lock:
            return list(reversed(self._images))


_current: ContextVar[Scope | None] = ContextVar("vlm_agent_scope", default=None)


@contextmanager
def owned_by(scope: Scope | None) -> Iterator[None]:
    token = _current.set(scope)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> Scope | None:
    """The running request's scope; None outside any (one owner for everything)."""
    return _current.get()


def key() -> str | None:
    """The running request's cache tag; None outside any scope."""
    scope = _current.get()
    return None if scope is None else scope.key

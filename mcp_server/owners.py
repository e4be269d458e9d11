"""What belongs to whom: image ids, pictures, remembered labels and cached work, per client.

Over HTTP each MCP session is an owner; what its requests made (the images they loaded, the
pictures they wrote, the labels they asked for, the encodings and prompt prefixes the caches
keep, ``tools.scope``) is found only by that session. Another session asking for it gets
"not found", worded exactly as for a name nobody made. A request without a session (the
2026-07-28 protocol has none) belongs to the principal: the bearer token's holder, or without
a token, the one anonymous caller that every such request is. On stdio there is one client,
so one owner.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from tools.scope import Scope

#: pictures one owner remembers (newest kept): far more than any output folder holds at once
MOST_PICTURES = 4096
#: labels one owner remembers for completion (newest kept)
MOST_LABELS = 200


class Recent:
    """Strings remembered most recent first, at most ``most``; thread-safe."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._items: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, item: str) -> None:
        with self._lock:
            self._items.pop(item, None)
            self._items[item] = None
            while len(self._items) > self.most:
                self._items.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        with self._lock:
            return item in self._items

    def newest_first(self) -> list[str]:
        with self._lock:
            return list(reversed(self._items))


class Owner:
    """One client's things: its scope in the core, its pictures and the labels it asked for."""

    def __init__(self) -> None:
        self.scope = Scope()
        self.pictures = Recent(MOST_PICTURES)
        self.labels = Recent(MOST_LABELS)

    def remember(self, tool: str, arguments: Mapping[str, Any]) -> None:
        """Keep the labels of a call that succeeded, for completing new ones."""
        labels: Any = arguments.get("labels")
        if tool == "compare_budgets" and arguments.get("task") == "detect":
            labels = str(arguments.get("prompt") or "").split(",")
        if not isinstance(labels, list):
            return
        for label in labels:
            if isinstance(label, str) and label.strip():
                self.labels.add(label.strip())


def connection_of(session: Any) -> Any:
    # A request's session is a proxy made per request; the connection behind it is what lasts.
    return getattr(session, "_connection", session)


class Owners:
    """Who owns a request: one owner for everything (stdio, in process) until ``per_session``."""

    def __init__(self) -> None:
        #: the one owner while there is one client
        self.single: Owner | None = Owner()
        self._principal = Owner()
        self._sessions: weakref.WeakKeyDictionary[Any, Owner] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def per_session(self) -> None:
        """Serve many clients (HTTP): from now on each session owns what it makes."""
        self.single = None

    def of(self, session: Any) -> Owner:
        """The owner of a request, from its session (``ctx.request_context.session``)."""
        if self.single is not None:
            return self.single
        connection = connection_of(session)
        if getattr(connection, "session_id", None) is None:
            # No session to tell callers apart by: the token, when there is one, already let
            # only its holder in; without one, every such request is the same anonymous caller.
            return self._principal
        with self._lock:
            owner = self._sessions.get(connection)
            if owner is None:
                # Held as long as the session's connection lives; an ended session's things go with it.
                owner = self._sessions[connection] = Owner()
            return owner

    @property
    def sessions(self) -> int:
        return len(self._sessions)

"""Log notifications to the clients that ask for them: load progress, cache hits, refusals.

A client asks in one of two ways, by protocol version: up to 2025-11-25 with
``logging/setLevel``, which holds for its whole connection; from 2026-07-28 on, per request,
with the level in the request's ``_meta`` (the SDK's Client ``log_level``). A client that
did neither gets no log messages.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from mcp.server.connection import allowed_log_levels
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import Context
from mcp_types import EmptyResult, LoggingMessageNotification, LoggingMessageNotificationParams, SetLevelRequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

log = logging.getLogger("vlm_agent.server")

LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LOGGER = "vlm-agent"

#: the level each handshake-era connection asked for with logging/setLevel
_chosen: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _connection(session: Any) -> Any:
    # A request's session is a proxy made per request; the connection behind it is what lasts.
    return getattr(session, "_connection", session)


def install(server: Server[Any]) -> None:
    """Serve ``logging/setLevel`` (and so declare the logging capability)."""

    async def set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        _chosen[_connection(ctx.session)] = params.level
        return EmptyResult()

    server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)



def wanted(ctx: Context[Any, Any] | None, level: str) -> bool:
    """Whether the client of this request asked for messages at ``level``."""
    if ctx is None:
        return False
    try:
        request = ctx.request_context
    except ValueError:  # not inside a request
        return False
    if request.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return level in allowed_log_levels(request.protocol_version, request.meta)
    chosen = _chosen.get(_connection(request.session))
    return chosen is not None and LEVELS.index(level) >= LEVELS.index(chosen)


async def notify(ctx: Context[Any, Any] | None, level: str, message: str) -> None:
    """Send ``message`` to this request's client when it asked for that level."""
    log.debug("client log (%s): %s", level, message)
    if not wanted(ctx, level):
        return
    assert ctx is not None
    request = ctx.request_context
    note = LoggingMessageNotification(params=LoggingMessageNotificationParams(level=level, data=message, logger=LOGGER))
    try:
        # On this request's stream: 2026-07-28 allows it nowhere else.
        await request.session.send_notification(note, related_request_id=request.request_id)
    except Exception:  # a client that went away must not fail the call it made
        log.debug("could not send a log message to the client", exc_info=True)


async def after_call(ctx: Context[Any, Any] | None, tool: str, structured: dict[str, Any] | None) -> None:
    """Say what work the caches saved on a call (Gemma 4 reports it)."""
    cache = (structured or {}).get("cache") or {}
    vision, reused = cache.get("vision"), cache.get("reused_prompt_tokens") or 0
    if vision in ("hit", "partial") or reused:
        ids = ", ".join((structured or {}).get("image_ids") or [])
        await notify(ctx, "info", f"{tool}: vision cache {vision} for {ids}; {reused} prompt tokens reused from an earlier call")

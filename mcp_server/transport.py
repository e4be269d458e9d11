"""Running the server: stdio for IDE assistants, streamable HTTP for everything else.

HTTP is guarded three ways: it binds loopback unless told otherwise, the Host and
Origin headers must name an allowed host (DNS-rebinding protection), and an
optional bearer token is required on every request.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, JSONRPCRequest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .wire import MAX_MESSAGE_BYTES, MiB, Refusal, check_message

log = logging.getLogger("vlm_agent.server")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def security_settings(host: str, extra_hosts: Sequence[str] = ()) -> TransportSecuritySettings:
    """Host and Origin allow-lists: loopback names, the bound host, and any named extra."""
    hosts = list(LOOPBACK_HOSTS)
    if host not in ("0.0.0.0", "::", *LOOPBACK_HOSTS, "::1"):
        hosts.append(f"[{host}]" if ":" in host else host)
    hosts.extend(extra_hosts)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{h}:*" for h in hosts] + hosts,
        allowed_origins=[f"{scheme}://{h}:*" for h in hosts for scheme in ("http", "https")]
        + [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")],
    )


class BearerToken:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every connection, not only plain requests: installing a WebSocket library into the
        # environment would otherwise open an unguarded door.
        if scope["type"] in ("http", "websocket"):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await self.refuse(send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def refuse(send: Send) -> None:
        # The error never echoes what was sent: it may be a mistyped secret.
        body = json.dumps({"error": "missing or wrong bearer token"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="vlm-agent"'),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


#: stateful sessions at once, and how long an idle one is kept (``--max-sessions``,
#: ``--session-idle-s``): never-closed sessions must not pile up memory or lock new clients out for long
MAX_SESSIONS = 256
SESSION_IDLE_S = 300.0


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = MAX_SESSIONS
    idle_s: float = SESSION_IDLE_S


class SessionCap:
    """ASGI middleware: the SDK's bare "Too many open sessions" (503) becomes a sentence that says
    what to do, as a JSON-RPC error with ``Retry-After``.

    The SDK decides (it counts the sessions and ends idle ones); only a request that would open a
    session, one without ``mcp-session-id``, can meet the cap."""

    def __init__(self, app: ASGIApp, limits: SessionLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or b"mcp-session-id" in dict(scope.get("headers") or []):
            await self.app(scope, receive, send)
            return
        refused = False

        async def reworded(message: Message) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 503:
                refused = True
                return
            if not refused:
                await send(message)
            elif not message.get("more_body"):
                await self.refuse(send)

        await self.app(scope, receive, reworded)

    async def refuse(self, send: Send) -> None:
        idle = f"{self.limits.idle_s:g}"
        sentence = (
            f"The server has {self.limits.max_sessions} open sessions, its limit; end an unused one with "
            f"DELETE, or retry once an idle one expires ({idle} s without a request)."
        )
        refusal = Refusal(INTERNAL_ERROR, sentence)
        retry = str(max(1, math.ceil(self.limits.idle_s))).encode()
        await send_json(send, 503, refusal.response().model_dump(mode="json"), [(b"retry-after", retry)])


def allowed_names(host: str, extra_hosts: Sequence[str] = ()) -> set[str]:
    """Host names (lower case, IPv6 in brackets) the Host and Origin headers may carry."""
    hosts = {h.lower() for h in LOOPBACK_HOSTS}
    if host not in ("0.0.0.0", "::", *LOOPBACK_HOSTS, "::1"):
        hosts.add(f"[{host}]" if ":" in host else host)
    hosts.update(h.lower() for h in extra_hosts)
    return hosts


def split_host(value: str) -> tuple[str, str | None] | None:
    """``name`` and ``port`` of a Host header value, or None when it is not exactly that shape."""
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        if not bracket:
            return None
        name += "]"
    else:
        name, _, rest = value.partition(":")
        rest = ":" + rest if _ else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and rest[1:].isascii() and len(rest) <= 6):
        return None
    return name.lower(), rest[1:] or None


def host_allowed(value: str, names: set[str]) -> bool:
    parts = split_host(value)
    return parts is not None and parts[0] in names


def origin_allowed(value: str, names: set[str]) -> bool:
    """Only ``http(s)://NAME[:PORT]`` with an allowed NAME: no prefix match, no path, no user info."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or "/" in rest or "@" in rest:
        return False
    return host_allowed(rest, names)


class HostGuard:
    """ASGI middleware: Host and Origin compared whole, before the SDK's own (prefix-matching) check.

    ``Host: localhost:evil`` or ``Origin: http://localhost:1234.evil.com`` name other hosts: a
    DNS-rebinding page could use them. A wrong Host gets 421, a wrong Origin 403. Host names and
    schemes compare without case (``Host: LOCALHOST``), ports exactly.
    """

    def __init__(self, app: ASGIApp, names: set[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope.get("headers") or []
            hosts = [v.decode("latin-1") for k, v in headers if k == b"host"]
            origins = [v.decode("latin-1") for k, v in headers if k == b"origin"]
            if len(hosts) != 1 or not host_allowed(hosts[0], self.names):
                await refuse(scope, send, 421, "The Host header does not name this server.")
                return
            if len(origins) > 1 or (origins and not origin_allowed(origins[0], self.names)):
                await refuse(scope, send, 403, "Requests from this origin are not allowed.")
                return
            # Names and schemes are case-insensitive and ports are digits: lower case, they pass the
            # SDK's own (case-sensitive) check behind this one as they passed ours.
            lowered = [(k, v.lower() if k in (b"host", b"origin") else v) for k, v in headers]
            scope = {**scope, "headers": lowered}
        await self.app(scope, receive, send)


class MessageGuard:
    """ASGI middleware: a POSTed message is read whole (up to ``MAX_MESSAGE_BYTES``) and judged
    like a stdio line before the SDK sees it; a refusal is a JSON-RPC error, 413 or 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_MESSAGE_BYTES:
            await refuse_message(send, 413, Refusal(INVALID_REQUEST, too_large()))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > MAX_MESSAGE_BYTES:
                await refuse_message(send, 413, Refusal(INVALID_REQUEST, too_large()))
                return
            if not message.get("more_body"):
                break
        checked = check_message(bytes(body))
        if isinstance(checked, Refusal):
            log.warning("refused an HTTP message: %s", checked.message)
            await refuse_message(send, 400, checked)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        # What the message is, for the guards behind this one (HangUps): parsed once, here.
        await self.app({**scope, MESSAGE: checked}, replay, send)


#: the scope key under which MessageGuard leaves the parsed message
MESSAGE = "vlm_agent.message"


def session_of(scope: Scope) -> str | None:
    value = dict(scope.get("headers") or []).get(b"mcp-session-id")
    return value.decode("latin-1") if value else None


class HangUps:
    """ASGI middleware: a client that hangs up before its request is answered has cancelled it.

    On a session (the 2025 protocol) the SDK keeps serving a request whose client has gone, in
    case it reconnects: the call would hold its queue place and the model to the end. Here a
    hang-up before the answer is complete becomes the protocol's own ``notifications/cancelled``
    for that request, sent into the session, so the call stops as if the client had cancelled
    it. (Without a session, the SDK already cancels a request whose stream is closed.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = scope.get(MESSAGE)
        request = getattr(message, "root", message)
        if (
            scope["type"] != "http" or not isinstance(request, JSONRPCRequest) or request.method == "initialize"
            or session_of(scope) is None
        ):
            await self.app(scope, receive, send)
            return
        answered = cancelled = False

        async def watched_send(event: Message) -> None:
            nonlocal answered
            if event["type"] == "http.response.body" and not event.get("more_body"):
                answered = True
            await send(event)

        async def watched_receive() -> Message:
            nonlocal cancelled
            event = await receive()
            if event["type"] == "http.disconnect" and not answered and not cancelled:
                cancelled = True
                with anyio.CancelScope(shield=True):
                    await self.cancel(scope, request.id)
            return event

        await self.app(scope, watched_receive, watched_send)

    async def cancel(self, scope: Scope, request_id: Any) -> None:
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": {"requestId": request_id, "reason": "the client hung up"}}
        body = json.dumps(note).encode()
        headers = [(k, v) for k, v in scope.get("headers") or [] if k not in (b"content-length", b"content-type", b"accept")]
        headers += [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream"),
                    (b"content-length", str(len(body)).encode())]
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def discard(_: Message) -> None:
            pass

        log.info("a client hung up before its request %r was answered: cancelling it", request_id)
        try:
            await self.app({**scope, "headers": headers, MESSAGE: None}, receive, discard)
        except Exception:  # the session may be ending too; the request then ends with it
            log.debug("could not cancel the request of a client that hung up", exc_info=True)


class IdleSessions:
    """ASGI middleware: a session is idle when it has sent no request for ``idle_s``, whatever
    streams it holds open, and is then ended.

    The SDK counts an open GET stream (which a client may hold for hours to hear from the
    server) as a request in flight, so a client that only listens would keep its session, and
    its place under ``max_sessions``, forever. Here every other request marks the session
    active; while a GET stream is open, a watch ends the session once it has been idle by
    requests for ``idle_s``, through the SDK's own idle scope, as its timer would.
    """

    def __init__(self, app: ASGIApp, idle_s: float, transport_of: Callable[[str], Any]) -> None:
        self.app = app
        self.idle_s = idle_s
        self.transport_of = transport_of
        #: per session: requests (other than GET streams) in flight, and when the last one ended
        self.busy: dict[str, int] = {}
        self.last: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        session = session_of(scope)
        if session is None:
            await self.app(scope, receive, self.noting_new(send))
        elif scope.get("method") == "GET":
            await self.listen(session, scope, receive, send)
        else:
            self.busy[session] = self.busy.get(session, 0) + 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.busy[session] -= 1
                self.last[session] = anyio.current_time()
                self.forget_ended()

    def noting_new(self, send: Send) -> Send:
        async def noted(event: Message) -> None:
            if event["type"] == "http.response.start":
                opened = dict(event.get("headers") or []).get(b"mcp-session-id")
                if opened:
                    self.last[opened.decode("latin-1")] = anyio.current_time()
            await send(event)

        return noted

    def idle_for(self, session: str) -> float:
        if self.busy.get(session):
            return 0.0
        return anyio.current_time() - self.last.setdefault(session, anyio.current_time())

    async def listen(self, session: str, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch() -> None:
            while (left := self.idle_s - self.idle_for(session)) > 0:
                await anyio.sleep(left)
            transport = self.transport_of(session)
            if transport is not None:
                log.info("session %s sent no request for %g s: ending it and its open stream", session[:16], self.idle_s)
                idle = getattr(transport, "idle_scope", None)
                if idle is not None:
                    idle.cancel()  # the SDK's own way out: it forgets the session and closes its streams
                else:
                    await transport.terminate()

        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            try:
                await self.app(scope, receive, send)
            finally:
                group.cancel_scope.cancel()

    def forget_ended(self) -> None:
        for session in [s for s in self.last if not self.busy.get(s) and self.transport_of(s) is None]:
            self.last.pop(session, None)
            self.busy.pop(session, None)


def too_large() -> str:
    return f"The message is larger than {MAX_MESSAGE_BYTES // MiB} MiB; send images as paths, URLs or image_ids."


async def refuse(scope: Scope, send: Send, status: int, sentence: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send_json(send, status, {"error": sentence})


async def refuse_message(send: Send, status: int, refusal: Refusal) -> None:
    await send_json(send, status, refusal.response().model_dump(mode="json"))


async def send_json(send: Send, status: int, payload: object, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def http_app(
    server: MCPServer, host: str, token: str | None, extra_hosts: Sequence[str] = (),
    sessions: SessionLimits = SessionLimits(),
) -> ASGIApp:
    resident = getattr(server, "resident", None)
    if resident is not None:
        # Many clients from here on: each session owns the images, pictures and labels it makes.
        resident.owners.per_session()
    app: ASGIApp = server.streamable_http_app(
        transport_security=security_settings(host, extra_hosts), host=host, max_request_body_size=MAX_MESSAGE_BYTES,
        max_sessions=sessions.max_sessions, session_idle_timeout=sessions.idle_s,
    )
    manager = server.session_manager
    # The SDK keeps no public map of its sessions; the pinned version's is read, never changed.
    app = IdleSessions(app, sessions.idle_s, lambda session: manager._server_instances.get(session))  # noqa: SLF001
    app = SessionCap(app, sessions)
    app = HangUps(app)
    app = MessageGuard(app)
    # The token first: nobody without it learns anything, not even which hosts are allowed.
    app = HostGuard(app, allowed_names(host, extra_hosts))
    return BearerToken(app, token) if token else app


def serve_http(
    server: MCPServer, host: str, port: int, token: str | None, extra_hosts: Sequence[str] = (),
    sessions: SessionLimits = SessionLimits(),
) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("serving on %s without a token: anyone who can reach this port can use the model", host)
    log.info("MCP endpoint: http://%s:%d/mcp", f"[{host}]" if ":" in host else host, port)
    uvicorn.run(http_app(server, host, token, extra_hosts, sessions), host=host, port=port, log_level="warning")

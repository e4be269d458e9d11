"""Running the server: stdio for IDE assistants, streamable HTTP for everything else.

HTTP is guarded three ways: it binds loopback unless told otherwise, the Host and
Origin headers must name an allowed host (DNS-rebinding protection), and an
optional bearer token is required on every request.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Sequence

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

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


def http_app(server: MCPServer, host: str, token: str | None, extra_hosts: Sequence[str] = ()) -> ASGIApp:
    app: ASGIApp = server.streamable_http_app(transport_security=security_settings(host, extra_hosts), host=host)
    return BearerToken(app, token) if token else app


def serve_http(server: MCPServer, host: str, port: int, token: str | None, extra_hosts: Sequence[str] = ()) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("serving on %s without a token: anyone who can reach this port can use the model", host)
    log.info("MCP endpoint: http://%s:%d/mcp", f"[{host}]" if ":" in host else host, port)
    uvicorn.run(http_app(server, host, token, extra_hosts), host=host, port=port, log_level="warning")

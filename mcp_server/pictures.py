"""Full-size pictures behind a link: what is too large for a tool result is read on demand.

Clients cap tool results (1 MB, 2000 px, 25k tokens are common), so a picture goes out
downscaled, with a ``resource_link`` to the full-size PNG the server wrote, which any
client can fetch through ``resources/read`` at ``vlm-agent://pictures/NAME``.
"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp_types import ResourceLink

TEMPLATE = "vlm-agent://pictures/{name}"
#: the names the server gives its pictures (Engine.output_path): nothing else can be read here
NAME = re.compile(r"[a-z_]+-[0-9a-f]{12}\.png")


def uri(path: Path) -> str:
    return TEMPLATE.format(name=path.name)


def link(path: Path, size: tuple[int, int]) -> ResourceLink:
    """A resource_link block to the full-size picture at ``path``."""
    return ResourceLink(
        uri=uri(path), name=path.name, title="full-size picture",
        description=f"the full-size PNG, {size[0]}x{size[1]} px", mime_type="image/png", size=path.stat().st_size,
    )


def names(out_dir: Path) -> list[str]:
    """The pictures the server wrote, newest first."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if NAME.fullmatch(p.name) and p.is_file()]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def register(server: MCPServer, out_dir: Path) -> None:
    @server.resource(
        TEMPLATE, mime_type="image/png", title="Full-size picture",
        description="A full-size annotated picture (detect) or budget comparison (compare_budgets) "
        "that a tool result linked to.",
    )
    async def picture(name: str) -> bytes:
        # Only names of the server's own pictures: no path can be smuggled in.
        path = out_dir / name
        if not NAME.fullmatch(name) or not path.is_file():
            # Not found: invalid params with the URI, as the protocol asks, not an internal error.
            raise ResourceNotFoundError(f"No picture named {name[:60]!r}; tool results link to the pictures there are.")
        # A full-size picture may be tens of megabytes: read on a worker thread, not the event loop.
        return await anyio.to_thread.run_sync(path.read_bytes)

"""Full-size pictures behind a link: what is too large for a tool result is read on demand.

Clients cap tool results (1 MB, 2000 px, 25k tokens are common), so a picture goes out
downscaled, with a ``resource_link`` to the full-size PNG the server wrote, which the client
that made it can fetch through ``resources/read`` at ``vlm-agent://pictures/NAME``. Only a
picture the caller's own calls wrote is served (``owners``), and only the regular file the
server wrote under that name, never a link put in its place (``tools.outputs.read_picture``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp_types import ResourceLink

from tools.outputs import read_picture

from .owners import Owner, Owners

TEMPLATE = "vlm-agent://pictures/{name}"
#: the names the server gives its pictures (Resident.output_path): nothing else can be read here
NAME = re.compile(r"[a-z_]+-[0-9a-f]{12}\.png")


def uri(path: Path) -> str:
    return TEMPLATE.format(name=path.name)


def link(path: Path, size: tuple[int, int]) -> ResourceLink:
    """A resource_link block to the full-size picture at ``path``."""
    return ResourceLink(
        uri=uri(path), name=path.name, title="full-size picture",
        description=f"the full-size PNG, {size[0]}x{size[1]} px", mime_type="image/png", size=path.stat().st_size,
    )


def names(out_dir: Path, owner: Owner, prefix: str = "", most: int = 100) -> list[str]:
    """Up to ``most`` of the pictures ``owner``'s calls wrote that are still there, newest first."""
    found: list[str] = []
    for name in owner.pictures.newest_first():
        if len(found) >= most:
            break
        if not name.startswith(prefix):
            continue
        try:
            if stat.S_ISREG(os.lstat(out_dir / name).st_mode):
                found.append(name)
        except OSError:
            continue  # pruned since
    return found


def register(server: MCPServer, out_dir: Path, owners: Owners) -> None:
    @server.resource(
        TEMPLATE, mime_type="image/png", title="Full-size picture",
        description="A full-size annotated picture (detect) or budget comparison (compare_budgets) "
        "that a tool result linked to.",
    )
    async def picture(name: str, ctx: Context) -> bytes:
        # Only names of pictures this caller's calls wrote: no path can be smuggled in, and no
        # other session's picture is found. A full-size picture may be tens of megabytes: read
        # on a worker thread, not the event loop.
        mine = NAME.fullmatch(name) is not None and name in owners.of(ctx.request_context.session).pictures
        data = await anyio.to_thread.run_sync(read_picture, out_dir, name) if mine else None
        if data is None:
            # The same sentence for a name never written, another session's, and a link put in its place;
            # not found is invalid params with the URI, as the protocol asks, not an internal error.
            raise ResourceNotFoundError(f"No picture named {name[:60]!r}; tool results link to the pictures there are.")
        return data

"""The MCP server: registration of the tools, prompts and resources over one resident model.

Protocol glue only. ``build_server`` makes the ``Resident`` model (``resident``), whose load
the lifespan starts and whose ``State`` it hands every request; registers the tools
(``tools``), the prompts, completion and the pictures and model resources; and
``VisionServer`` turns every tool failure into one sentence for the caller (``errors``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult

from tools.about import package_version
from tools.errors import VlmError

from . import completion, logs, pictures, prompts
from .arguments import IMAGE_REF
from .errors import error_result, explain
from .handlers import TITLES, TOOLS
from .icons import icon
from .resident import Resident, Settings, State
from .running import owner_of

#: ``Settings`` is what ``build_server`` takes, so it is found here too
__all__ = ["Settings", "VisionServer", "build_server"]


class VisionServer(MCPServer[State]):
    """MCPServer whose tool errors are one sentence meant for the caller, never a traceback."""

    resident: Resident

    async def run_stdio_async(self) -> None:
        # Our stdio transport answers every line, even one the SDK's parser would drop silently.
        from .stdio import serve_stdio

        await serve_stdio(self)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context[State] | None = None) -> Any:
        known = sorted(tool.name for tool in await self.list_tools())
        if name not in known:
            # repr keeps a hostile name on one line; the list makes the error actionable.
            return error_result(f"Unknown tool {name[:40]!r}; use one of {', '.join(known[:-1])} or {known[-1]}.")
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            refused = error_result(*explain(name, exc))
            await logs.notify(context, "warning", f"{name} refused: {refused.content[0].text}")  # type: ignore[union-attr]
            return refused
        if context is not None:
            # Labels of calls that worked, for completing new ones: the caller's own.
            owner_of(context).remember(name, arguments)
        if isinstance(result, CallToolResult):
            await logs.after_call(context, name, result.structured_content)
        return result

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Context[State] | None = None
    ) -> Any:
        prompts.check(await self.list_prompts(), name, arguments)
        return await super().get_prompt(name, arguments, context)


def build_server(settings: Settings, load: Callable[..., Any] | None = None) -> VisionServer:
    """The MCP server over one resident model; ``load`` replaces ``load_model`` (tests)."""
    resident = Resident(settings, load)

    @asynccontextmanager
    async def lifespan(_: MCPServer[State]) -> AsyncIterator[State]:
        resident.start()
        yield State(resident)

    server = VisionServer(
        "vlm-agent",
        title="vlm-agent: vision-language model tools",
        version=package_version(),
        icons=icon("server"),
        instructions=(
            "Vision tools over one resident vision-language model. Images are given as "
            f"{IMAGE_REF}. Every result returns image_ids: reuse them instead of sending an image again. "
            "vlm-agent://model says what the model can do: tasks, budgets, and how it keeps a conversation's context."
        ),
        lifespan=lifespan,
    )
    server.resident = resident
    # logging/setLevel is a request the SDK's MCPServer does not route itself.
    logs.install(server._lowlevel_server)  # noqa: SLF001
    pictures.register(server, settings.out_dir, resident.owners)
    prompts.register(server)
    completion.register(server, resident, settings.out_dir)
    for tool in TOOLS:
        # Docstrings are indented in source; clients show the description verbatim.
        server.tool(
            description=inspect.cleandoc(tool.__doc__ or ""), title=TITLES[tool.__name__], icons=icon(tool.__name__)
        )(tool)

    @server.resource("vlm-agent://model", mime_type="application/json")
    async def model_info() -> str:
        """The resident model: family, tasks, budgets, context policy and limits."""
        try:
            vision = await resident.ready()
        except VlmError as exc:
            raise ResourceError(str(exc)) from None  # the reason reaches the client, not "Error reading resource"
        return json.dumps(vision.model_info())

    return server

"""Tool errors as the caller meets them: one sentence, a code and the argument it is about.

``explain`` turns what a tool raised (a ``VlmError`` of the core, a validation error of its
arguments, or a crash) into that sentence; ``error_result`` carries it as a tool result.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import ValidationError

from tools.errors import VlmError

log = logging.getLogger("vlm_agent.server")

#: where a tool error's code (and the argument it is about) travel, in the result's ``_meta``
ERROR_META = "vlm-agent/error"

UNION_BRANCHES = {"int", "str", "float", "bool", "none"}


def validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    # An argument that takes one of several types (budget: a number or "auto") adds the type
    # it tried to the place ("budget.int"); the caller named only the argument.
    where = ".".join(str(part) for part in first["loc"] if str(part) not in UNION_BRANCHES and "[" not in str(part))
    where = where or "arguments"
    more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
    return f"Argument '{where}': {first['msg']}{more}."


def error_result(message: str, code: str = "invalid_request", param: str | None = None) -> CallToolResult:
    """A tool error: the sentence as text, the code for programs (the chat client) in ``_meta``.

    No structured content: TypeScript clients (the Inspector, Claude Code, VS Code, Cursor) check it
    against the tool's output schema even on an error and would show that failure instead of the
    sentence, and clients that hand their model only the structured content would hide the sentence.
    """
    error: dict[str, Any] = {"code": code}
    if param is not None:
        error["param"] = param
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True, _meta={ERROR_META: error})


def explain(tool: str, error: ToolError) -> tuple[str, str, str | None]:
    """The caller's sentence, error code and the argument it is about, for a failed tool call."""
    cause = error.__cause__
    if isinstance(cause, VlmError):
        # Worded with the tools' argument names, which is how the core names its parameters.
        return cause.worded(), cause.code, cause.param
    if isinstance(cause, ValidationError):
        where = cause.errors()[0]["loc"]
        return validation_message(cause), "invalid_request", str(where[0]) if where else None
    if cause is None:
        return str(error), "invalid_request", None  # e.g. an unknown tool name
    log.error("tool %s crashed", tool, exc_info=cause)
    return f"The {tool} tool failed unexpectedly; the server logged the details and keeps serving.", "internal", None

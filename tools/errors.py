"""Errors meant for people.

Every failure a user can cause or fix is one of these. The message is a single
actionable sentence: no traceback, no server path, no memory address. Each error carries
a ``code`` (its kind) and, where it is about one, the ``param`` it is about. The core
writes that parameter as ``{param}`` in the message, any other parameter it names as
``{param:NAME}`` and an example list as ``{list:70,280,1120}``, and never names a
command-line flag or writes a list in one syntax: each adapter words it its own way
(``worded``), the MCP server with its argument names and JSON lists (``str(error)``), the
CLI with its flags and comma-separated values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

PARAM = "{param}"
#: another parameter a message names: ``{param:budget}``
OTHER_PARAM_RE = re.compile(r"\{param:(\w+)\}")
#: an example list of values: ``{list:70,280,1120}``
EXAMPLE_LIST_RE = re.compile(r"\{list:([^{}]*)\}")


def json_list(items: Sequence[str]) -> str:
    """An example list as a JSON caller writes it: ``[70, 280, 1120]``."""
    return "[" + ", ".join(items) + "]"


class VlmError(Exception):
    """Base of every error vlm-agent reports to a user."""

    #: short machine-readable kind, stable across releases
    code: str = "error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        #: the message, with ``{param}`` where the parameter is named
        self.template = message
        #: the request parameter the error is about (its API name), if one
        self.param = param

    def worded(
        self, names: Mapping[str, str] | None = None, lists: Callable[[Sequence[str]], str] = json_list
    ) -> str:
        """The message with each parameter named as ``names`` calls it (default: its API name) and
        example lists written by ``lists`` (default: JSON)."""
        names = names or {}
        text = self.template
        if self.param is not None:
            text = text.replace(PARAM, names.get(self.param, self.param))
        text = OTHER_PARAM_RE.sub(lambda found: names.get(found[1], found[1]), text)
        return EXAMPLE_LIST_RE.sub(lambda found: lists(found[1].split(",")), text)

    @property
    def params(self) -> list[str]:
        """Every parameter the message names: its own first, then the others."""
        return ([self.param] if self.param else []) + OTHER_PARAM_RE.findall(self.template)

    @property
    def message(self) -> str:
        return self.worded()

    def __str__(self) -> str:
        return self.worded()


class InvalidRequest(VlmError):
    """A parameter is out of range or malformed."""

    code = "invalid_request"


class ContextOverflow(InvalidRequest):
    """The prompt (history, images and answer) does not fit the model's context."""

    code = "context_overflow"


class ImageError(VlmError):
    """An image could not be read, or breaks a limit."""

    code = "bad_image"


class OutputError(VlmError):
    """A picture could not be written (a full disk, a folder that cannot be written to)."""

    code = "output_failed"


class AccessDenied(VlmError):
    """The access policy forbids reading this path or URL."""

    code = "access_denied"


class UnknownImage(VlmError):
    """An image_id that this process has not seen."""

    code = "unknown_image"


class ModelNotFound(VlmError):
    """A model id or path that cannot be loaded."""

    code = "model_not_found"


class Unsupported(VlmError):
    """The loaded model family cannot do what was asked."""

    code = "unsupported"


class OutOfMemory(VlmError):
    """The device ran out of memory during a call."""

    code = "out_of_memory"


class Busy(VlmError):
    """Too many requests are already waiting for the model."""

    code = "busy"


class EngineUnavailable(VlmError):
    """A serving engine could not be reached, timed out, or failed on its side (5xx)."""

    code = "engine_unavailable"


class EngineError(VlmError):
    """A serving engine refused a request (4xx other than an unknown model)."""

    code = "engine_error"


class Cancelled(VlmError):
    """The caller cancelled the request or went away before it finished."""

    code = "cancelled"

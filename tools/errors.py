"""Errors meant for people.

Every failure a user can cause or fix is one of these. The message is a single
actionable sentence: no traceback, no server path, no memory address. Adapters
(CLI, MCP server) print ``str(error)`` and keep going.
"""

from __future__ import annotations


class VlmError(Exception):
    """Base of every error vlm-agent reports to a user."""

    #: short machine-readable kind, stable across releases
    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(VlmError):
    """A parameter is out of range or malformed."""

    code = "invalid_request"


class ContextOverflow(InvalidRequest):
    """The prompt (history, images and answer) does not fit the model's context."""

    code = "context_overflow"


class ImageError(VlmError):
    """An image could not be read, or breaks a limit."""

    code = "bad_image"


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

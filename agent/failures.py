"""One line for anything that stops the chat from starting: never a traceback.

The MCP client runs its transport in a task group, so an error raised while connected
(ours included) arrives wrapped in an ``ExceptionGroup``, possibly several levels deep,
beside the transport's own errors. ``reason`` digs out the error that explains the
failure and says it in one sentence.
"""

from __future__ import annotations

from collections.abc import Iterator

from .session import ChatError


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``error``, exception groups flattened, in order."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


def reason(error: BaseException, *, server: str | None, log_path: str, started: bool = False) -> str:
    """One sentence for a failed start: our own message when there is one, else what the transport saw."""
    found = list(leaves(error))
    for leaf in found:
        if isinstance(leaf, ChatError):
            return str(leaf)
    where = f"the server at {server}" if server else "the server the chat started"
    for leaf in found:
        name = type(leaf).__name__
        if name in ("ConnectError", "ConnectTimeout") or isinstance(leaf, ConnectionError):
            return f"Cannot reach {where}; check the address and that it is running."
    when = "while chatting" if started else "during start-up"
    if server:
        return f"The connection to {where} failed {when}; check the address and the server's log."
    return f"The server stopped {when}; its log is {log_path}."


def http_refusal(server: str, status: int) -> str:
    """One sentence for an HTTP error status the server answered with."""
    if status in (401, 403):
        return f"The server at {server} refused the connection (HTTP {status}); check --token-env and the token."
    if status == 413:
        return f"The server at {server} refused a message as too large (HTTP 413); send fewer or smaller images."
    if status == 421:
        return f"The server at {server} does not accept this host name (HTTP 421); see its --allow-host."
    return f"The server at {server} answered HTTP {status}; check the address and the server's log."


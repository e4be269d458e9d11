"""Small text files a user names (a script, a schema): read within a byte cap, as UTF-8.

Each caller words the refusal its own way; what went wrong is one ``FileProblem``.
"""

from __future__ import annotations

from pathlib import Path


class FileProblem(Exception):
    """Why a file was not taken: ``kind`` is "unreadable", "too large" or "not UTF-8" (then ``line``
    holds the first bad byte, ``byte``)."""

    def __init__(self, kind: str, line: int = 0, byte: int = 0) -> None:
        super().__init__(kind)
        self.kind, self.line, self.byte = kind, line, byte


def read_capped_text(path: str | Path, limit: int) -> str:
    """The file's text: at most ``limit`` bytes are read (a pipe or a device never ends), decoded as UTF-8."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError:
        raise FileProblem("unreadable") from None
    if len(data) > limit:
        raise FileProblem("too large")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem("not UTF-8", data.count(b"\n", 0, exc.start) + 1, data[exc.start]) from None

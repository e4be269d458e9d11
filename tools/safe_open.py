"""Open a file that the access policy allowed, without a window for a symlink swap.

The policy judges a fully resolved path; opening that path string afterwards would follow
whatever symlink someone put in a parent folder meanwhile (``O_NOFOLLOW`` covers only the
last component). Here the walk starts at the allowed folder's descriptor and opens one
component at a time with ``O_NOFOLLOW``: a component that became a symlink fails the open.
"""

from __future__ import annotations

import os
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def open_beneath(root: Path, resolved: Path) -> int:
    """A read-only descriptor of ``resolved``, which lies under ``root``; raises OSError (ELOOP,
    ENOTDIR, ENOENT) when a component is no longer the folder or file it was when resolved."""
    parts = resolved.relative_to(root).parts
    if not parts:
        raise IsADirectoryError(str(resolved))
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)

"""Pictures the program writes for itself: whole or not at all, in a folder that stays bounded.

A write goes to a hidden partial file beside its target and is renamed into place, so a
full disk or a crash never leaves half a PNG under a real name; the partial is removed on
failure. The managed output folders (the server's and the chat's) are pruned before each
new picture: files past the age limit go, then the oldest until the folder fits its size
cap. A path a user names (``--out``) is written the same way but never pruned.

An output folder may be one the user chose, holding their own files: pruning looks only at
names the program gives its pictures (``OURS``, matched whole) and at its own partial files,
and only at regular files with one link; it never follows a link. Everything else in the
folder is left alone, whatever its age or size.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import OutputError

log = logging.getLogger("vlm_agent.outputs")

PARTIAL_SUFFIX = ".part"
#: the long side of a full-size picture: past it the picture is scaled down, and the result says so
MAX_PICTURE_SIDE = 4096
#: the most a picture of ours can weigh (4096 px square of noise is about 50 MB): larger is not ours
MAX_PICTURE_BYTES = 128 * 1024 * 1024
#: the names the program gives its pictures: ``picture_name`` (the server's), and the chat's
#: ``TOOL-IMAGEID-N.png``; nothing else in an output folder is ever removed or served
OURS = re.compile(r"[a-z_]{1,32}-[0-9a-f]{12}\.png|[a-z_]{1,32}-(?:img_[0-9a-f]{16}|image)-[0-9]{1,3}\.png")
#: what ``write_atomic`` writes before the rename, for one of our names
_PARTIAL = re.compile(rf"\.(?:{OURS.pattern})\.[0-9a-f]{{8}}{re.escape(PARTIAL_SUFFIX)}")

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class OutputLimits:
    max_bytes: int = 512 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600


def picture_name(kind: str) -> str:
    """A new name for a picture of ``kind`` (``detect``, ``budgets``): one ``OURS`` matches, and nobody else's."""
    return f"{kind}-{uuid.uuid4().hex[:12]}.png"


def ours(info: os.stat_result) -> bool:
    """Whether a file's ``lstat`` is what the program writes: a regular file with no other name."""
    return stat.S_ISREG(info.st_mode) and info.st_nlink == 1


def write_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(partial)`` and rename the partial file to ``target``; no partial survives a failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
    try:
        write(partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` as a PNG at ``path``, whole or not at all; returns the path."""
    target = Path(path)
    try:
        return write_atomic(target, lambda partial: image.save(partial, format="PNG"))
    except OSError as exc:
        # the name only: the message may reach a remote client, which must not learn server paths
        raise OutputError(f"Could not write the picture {target.name}: {write_failure(exc)}.") from exc


def write_failure(exc: OSError) -> str:
    """What went wrong with a write, and what to do, for a CLI user and an MCP client alike."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "there is no room left there; free some space and try again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "its folder cannot be written to; allow writing there or choose another folder"
    reason = str(exc.strerror or "the write failed").rstrip(".")
    return f"{reason}; check that its folder exists and can be written to"


def cap_picture(image: Image.Image, max_side: int = MAX_PICTURE_SIDE) -> tuple[Image.Image, str | None]:
    """``image`` scaled so its long side is at most ``max_side``, and a note when it was."""
    width, height = image.size
    if max(width, height) <= max_side:
        return image, None
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    note = (
        f"The full-size picture was scaled from {width}x{height} to {size[0]}x{size[1]} px "
        f"({max_side} px on the long side); box coordinates stay in original-image pixels."
    )
    return image.resize(size, Image.Resampling.LANCZOS), note


def prune(folder: Path, limits: OutputLimits, now: float | None = None) -> list[Path]:
    """Remove pictures of ours that no longer fit the folder's limits; returns what was removed.

    Only names ``OURS`` matches count, towards the size cap too: a user's files in the folder are
    neither removed nor counted. Partial files left by a crashed write are removed once they are
    a minute old (a live write may still own a younger one). The folder is opened once and every
    name looked at and removed through that descriptor, without following links.
    """
    try:
        # The folder itself may be a link the user chose; what lies in it is never followed.
        fd = os.open(folder, _DIR_FLAGS)
    except OSError:
        return []
    now = time.time() if now is None else now
    entries: list[tuple[float, int, str]] = []
    removed: list[str] = []
    try:
        for name in os.listdir(fd):
            partial = _PARTIAL.fullmatch(name) is not None
            if not partial and not OURS.fullmatch(name):
                continue
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if not ours(info):
                continue  # a link, a folder, a hard link to something else: not a picture we wrote
            if (partial and now - info.st_mtime > 60) or (not partial and now - info.st_mtime > limits.max_age_s):
                removed.append(name)
            elif not partial:
                entries.append((info.st_mtime, info.st_size, name))
        total = sum(size for _, size, _ in entries)
        for _, size, name in sorted(entries):
            if total <= limits.max_bytes:
                break
            removed.append(name)
            total -= size
        for name in removed:
            try:
                os.unlink(name, dir_fd=fd)  # the name itself: unlink never follows a link
            except OSError as exc:
                log.warning("could not remove the old output %s: %s", name, exc.strerror or exc)
    finally:
        os.close(fd)
    if removed:
        log.info("removed %d old output file(s) from the output folder", len(removed))
    return [folder / name for name in removed]


def read_picture(folder: Path, name: str) -> bytes | None:
    """The bytes of the picture ``name`` in ``folder``, or None unless it is one of ours: a name
    ``OURS`` matches, opened without following a link, a regular file with one link, of a
    picture's size. Judged on the open descriptor, so a swap after the check changes nothing."""
    if not OURS.fullmatch(name):
        return None
    try:
        root = os.open(folder, _DIR_FLAGS)
    except OSError:
        return None
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=root)
    except OSError:
        return None
    finally:
        os.close(root)
    try:
        info = os.fstat(fd)
        if not ours(info) or info.st_size > MAX_PICTURE_BYTES:
            return None
        with os.fdopen(fd, "rb") as picture:
            fd = -1
            data = picture.read(MAX_PICTURE_BYTES + 1)
        return data if len(data) <= MAX_PICTURE_BYTES else None
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)

"""Pictures the program writes for itself: whole or not at all, in a folder that stays bounded.

A write goes to a hidden partial file beside its target and is renamed into place, so a
full disk or a crash never leaves half a PNG under a real name; the partial is removed on
failure. The managed output folders (the server's and the chat's) are pruned before each
new picture: files past the age limit go, then the oldest until the folder fits its size
cap. A path a user names (``--out``) is written the same way but never pruned.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import ImageError

log = logging.getLogger("vlm_agent.outputs")

PARTIAL_SUFFIX = ".part"
#: the long side of a full-size picture: past it the picture is scaled down, and the result says so
MAX_PICTURE_SIDE = 4096


@dataclass(frozen=True)
class OutputLimits:
    max_bytes: int = 512 * 1024 * 1024
    max_age_s: float = 7 * 24 * 3600


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
        raise ImageError(f"Could not write the PNG {target.name}: {exc.strerror or exc}.") from exc


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
    """Remove what no longer fits the folder's limits; returns what was removed.

    Partial files left by a crashed write are removed once they are a minute old (a live
    write may still own a younger one).
    """
    if not folder.is_dir():
        return []
    now = time.time() if now is None else now
    entries: list[tuple[float, int, Path]] = []
    removed: list[Path] = []
    for path in folder.iterdir():
        try:
            info = path.lstat()
        except OSError:
            continue
        if not path.is_file() or path.is_symlink():
            continue
        partial = path.name.endswith(PARTIAL_SUFFIX)
        if (partial and now - info.st_mtime > 60) or (not partial and now - info.st_mtime > limits.max_age_s):
            removed.append(path)
        elif not partial:
            entries.append((info.st_mtime, info.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= limits.max_bytes:
            break
        removed.append(path)
        total -= size
    for path in removed:
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove the old output %s: %s", path.name, exc.strerror or exc)
    if removed:
        log.info("removed %d old output file(s) from the output folder", len(removed))
    return removed

"""Reading an image's bytes from a local file (within the access policy) or a data: URI."""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat

from ..errors import AccessDenied, ImageError
from ..safe_open import open_beneath
from .policy import AccessPolicy, Limits, resolve_path
from .shown import MiB, capital, quoted, size_words

DATA_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",  # not registered, but common enough in hand-written URIs
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    # documents and clips: their pages and frames are the pictures
    "application/pdf",
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "video/x-matroska",
    "video/x-msvideo",
}


def read_path(ref: str, policy: AccessPolicy) -> bytes:
    shown = quoted(ref)
    if not policy.allowed_dirs and not policy.allowed_files:
        raise AccessDenied(
            f"Reading local files is turned off here, so {shown} cannot be opened; send it as a data: URI."
        )
    try:
        resolved = resolve_path(ref)
    except (OSError, RuntimeError, ValueError):
        # RuntimeError: symlink loop; ValueError: NUL byte. Both messages name paths.
        raise ImageError(f"{capital(shown)} is not a usable file path.") from None
    # Access before existence, so nobody can probe which files exist outside.
    if not policy.allows_path(resolved):
        raise AccessDenied(
            f"{capital(shown)} is outside the allowed folders and files; "
            "move it into an allowed folder or send it as a data: URI."
        )
    limits = policy.limits
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise ImageError(f"No image at {shown}.") from None
    except NotADirectoryError:
        raise ImageError(f"No image at {shown}.") from None
    except PermissionError:
        raise ImageError(f"{capital(shown)} cannot be read: permission denied.") from None
    except OSError:
        raise ImageError(f"{capital(shown)} cannot be read.") from None
    # stat first: opening a FIFO or a device can block or never end.
    _check_regular(info, shown, limits)
    try:
        fd = open_beneath(policy.root_of(resolved), resolved)
    except PermissionError:
        raise ImageError(f"{capital(shown)} cannot be read: permission denied.") from None
    except OSError:
        raise ImageError(f"{capital(shown)} cannot be read.") from None
    try:
        # The path may have been swapped since the stat; judge what we opened.
        _check_regular(os.fstat(fd), shown, limits)
        chunks: list[bytes] = []
        left = limits.max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        raise ImageError(f"{capital(shown)} cannot be read.") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data:
        raise ImageError(f"{capital(shown)} is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{capital(shown)} is larger than the {size_words(limits.max_bytes)} limit; send a smaller file."
        )
    return data


def _check_regular(info: os.stat_result, shown: str, limits: Limits) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{capital(shown)} is a folder, not an image file.")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{capital(shown)} is not a regular file; pass an image file.")
    if info.st_size == 0:
        raise ImageError(f"{capital(shown)} is empty.")
    if info.st_size > limits.max_bytes:
        raise ImageError(
            f"{capital(shown)} is larger than the {size_words(limits.max_bytes)} limit; send a smaller file."
        )


# --- data: URIs -------------------------------------------------------------


def read_data_uri(ref: str, limits: Limits) -> bytes:
    # Never quote the URI itself: it is long, and it is the user's image.
    header, comma, payload = ref.partition(",")
    if not comma:
        raise ImageError("The data: URI has no ',' before its data; use data:image/png;base64,<data>.")
    parts = [p.strip().lower() for p in header[5:].split(";")]
    media = parts[0]
    if media not in DATA_TYPES:
        raise ImageError(
            "The data: URI must have an image media type (png, jpeg, webp, gif, bmp or tiff), application/pdf "
            "or a video type (mp4, quicktime, webm)."
        )
    if parts[-1] != "base64":
        raise ImageError("The data: URI must be base64-encoded; use data:image/png;base64,<data>.")
    # Count before decoding (or copying) so an oversize payload costs nothing.
    spaces = sum(payload.count(c) for c in " \t\r\n")
    chars = len(payload) - spaces
    if chars * 3 // 4 - 2 > limits.max_bytes:
        raise ImageError(
            f"The data: URI is larger than the {size_words(limits.max_bytes)} limit; send a smaller image."
        )
    if spaces:
        # Line-wrapped base64 is common when pasted; validate=True would refuse it.
        payload = re.sub(r"[ \t\r\n]+", "", payload)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(
            "The data: URI holds invalid base64; encode the image bytes with standard base64."
        ) from None
    if not data:
        raise ImageError("The data: URI holds no image data.")
    return data

"""Bytes to an RGB picture: only the formats we take, within the pixel cap, checked from the header first."""

from __future__ import annotations

import io
import threading
import warnings
from struct import error as struct_error

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .policy import Limits
from .shown import capital, size_words

# Pillow plugin ids we open; anything else (EPS, SVG, PSD ...) is refused even
# when it is renamed, because Image.open(formats=...) only tries these.
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"

# catch_warnings swaps process-wide state; the lock keeps our own threads from
# restoring each other's filters out of order.
_WARN_LOCK = threading.Lock()


def decode_image(
    data: bytes, limits: Limits, *, what: str = "the image"
) -> tuple[Image.Image, str]:
    """Decode ``data`` into an RGB image; returns it and the detected format.

    ``what`` names the image in error messages (e.g. a quoted path).
    """
    if not data:
        raise ImageError(f"{capital(what)} is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{capital(what)} is larger than the {size_words(limits.max_bytes)} limit; send a smaller file."
        )
    try:
        with _WARN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_FORMATS)
        fmt = "JPEG" if im.format == "MPO" else (im.format or "unknown")
        width, height = im.size
        # The header is all that has been read so far: refuse before .load()
        # allocates width*height pixels.
        if width * height > limits.max_pixels:
            raise ImageError(
                f"{capital(what)} is {width} by {height} pixels, over the "
                f"{limits.max_pixels:,}-pixel limit; send a smaller image."
            )
        im.load()  # first frame / page only; later frames are never decoded
        im = _apply_orientation(im)
        rgb = _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own bomb guard fired first (its cap may be below ours).
        cap = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
        raise ImageError(
            f"{capital(what)} is over the {cap:,}-pixel limit; send a smaller image."
        ) from None
    except UnidentifiedImageError:
        if _looks_supported(data):
            # The right signature but an unreadable header: a broken file, not a wrong one.
            raise ImageError(
                f"{capital(what)} is damaged or truncated and could not be decoded; re-export or re-send it."
            ) from None
        raise ImageError(f"{capital(what)} is not a {_FORMAT_NAMES} image.") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct_error):
        raise ImageError(
            f"{capital(what)} is damaged or truncated and could not be decoded; re-export or re-send it."
        ) from None
    return rgb, fmt


_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _looks_supported(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _apply_orientation(im: Image.Image) -> Image.Image:
    try:
        turned = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct_error):
        # A broken EXIF block should not cost the user an otherwise fine image.
        return im
    return turned if turned is not None else im


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        # Pillow's own convert clips 16-bit and float values at 255 instead of scaling.
        return Image.fromarray(_to_8bit(im)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Models see no alpha; transparent areas read best as white paper.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im.copy()  # detach from the decoder's file object
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(values.min()) if values.size else 0.0
    hi = float(values.max()) if values.size else 0.0
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = values
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = values / 257.0  # 16-bit data widened to 32-bit "I"
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else values * 0.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

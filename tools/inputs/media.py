"""References that expand into several pictures: a PDF's pages and a clip's frames.

A reference is read the way an image is (path, URL, data: URI, image_id) and then known by
its bytes (``sniff``): a PDF, a clip (MP4, MOV, WebM/Matroska, AVI, an animated GIF) or an
image. A PDF expands into its pages and a clip into frames chosen evenly across it, each a
``Part``: a picture with its ``Origin`` (page and render dpi, or frame index and time). Which
pages a call reads comes from the reference's fragment (``doc.pdf#pages=2-5``) or the call's
``pages`` argument; which span of a clip, from ``clip.mp4#t=10,20`` (seconds).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ImageError, InvalidRequest
from .image import ImageInput, LoadedImage, Source
from .origin import Origin

Kind = Literal["image", "pdf", "clip"]
#: ``(done, total, message)`` while pages render or frames decode
Step = Callable[[int, int, str], None]

#: ISO base media brands that are still images (HEIC, AVIF), not clips
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}
_FRAGMENT = re.compile(r"#(pages?|t)=([0-9.,\s-]*|all)$", re.IGNORECASE)


def sniff(data: bytes) -> Kind:
    """What the bytes are, by their signature; anything else is left to the image decoder to judge."""
    if data[:1024].find(b"%PDF-") != -1:  # PDFium, like most readers, takes a header within the first KiB
        return "pdf"
    if data[4:8] == b"ftyp" and data[8:12] not in _IMAGE_BRANDS:
        return "clip"
    if data.startswith(b"\x1a\x45\xdf\xa3") or (data[:4] == b"RIFF" and data[8:12] == b"AVI "):
        return "clip"
    if data.startswith((b"GIF87a", b"GIF89a")) and gif_images(data, stop=2) > 1:
        return "clip"
    return "image"


def gif_images(data: bytes, stop: int) -> int:
    """Images in a GIF, counted by walking its blocks (nothing decoded), up to ``stop``."""
    try:
        flags = data[10]
        at = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
        count = 0
        while at < len(data) and count < stop:
            kind = data[at]
            if kind == 0x3B:  # trailer
                break
            if kind == 0x21:  # extension: label, then sub-blocks
                at = _skip_blocks(data, at + 2)
            elif kind == 0x2C:  # image: descriptor, local colour table, LZW size, sub-blocks
                local = data[at + 9]
                at += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
                at = _skip_blocks(data, at + 1)
                count += 1
            else:
                break
        return count
    except (IndexError, struct.error):
        return 0


def _skip_blocks(data: bytes, at: int) -> int:
    while data[at]:
        at += data[at] + 1
    return at + 1


@dataclass(frozen=True)
class Selection:
    """Which pages or which span of seconds a reference asks for; None: all of it."""

    pages: str | None = None
    span: tuple[float, float] | None = None


def split_fragment(ref: str) -> tuple[str, Selection]:
    """``doc.pdf#pages=2-5`` into the reference and its selection; a reference without one is left whole."""
    found = _FRAGMENT.search(ref)
    if not found:
        return ref, Selection()
    key, value = found[1].lower(), found[2].strip()
    base = ref[: found.start()]
    if key.startswith("page"):
        return base, Selection(pages=value)
    return base, Selection(span=parse_span(value))


def parse_span(text: str) -> tuple[float, float]:
    """``10,20`` (seconds 10 to 20), ``10`` (from 10 on) or ``,20`` (up to 20)."""
    start, _, end = text.partition(",")
    try:
        first = float(start) if start.strip() else 0.0
        last = float(end) if end.strip() else float("inf")
    except ValueError:
        raise InvalidRequest(f"The time span {text[:20]!r} is not seconds like #t=10,20.", param="images") from None
    if not (first >= 0 and last > first):
        raise InvalidRequest(f"The time span {text[:20]!r} must start at 0 or later and end after it starts.", param="images")
    return first, last


@dataclass(frozen=True, eq=False)
class Media:
    """A reference read whole: its bytes, kind, id and how messages quote it. Nothing decoded yet."""

    kind: Kind
    data: bytes
    #: the image_id of its bytes
    id: str
    #: the reference, quoted for messages
    what: str
    source: Source
    selection: Selection = field(default_factory=Selection)
    url: str | None = None


@dataclass(frozen=True, eq=False)
class Part:
    """One picture of a reference: an image whole, a PDF's page or a clip's frame."""

    loaded: LoadedImage
    #: None for an image given as an image
    origin: Origin | None = None


@dataclass(frozen=True, eq=False)
class ClipInput:
    """A clip's chosen frames as a family's video path takes them: pictures, their indices in the clip,
    and the clip's frame rate, from which the processor writes each frame's timestamp."""

    frames: tuple[ImageInput, ...]
    indices: tuple[int, ...]
    times: tuple[float, ...]
    fps: float
    total_frames: int
    #: the clip's image_id: with the frame indices, what its encodings are kept by
    hash: str

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size


def part_id(document: str, key: str) -> str:
    """The image_id of one page or frame: the document's id and where in it, hashed."""
    return "img_" + hashlib.sha256(f"{document}:{key}".encode()).hexdigest()[:16]


def only_images(media: Media, what: str = "This argument", param: str | None = None) -> None:
    """Refuse a PDF or clip where only pictures go (history turns)."""
    if media.kind != "image":
        noun = "a PDF" if media.kind == "pdf" else "a video clip"
        raise ImageError(
            f"{what} takes pictures, and {media.what} is {noun}; send the turn's text alone, or its pages or "
            "frames as images.", param=param,
        )

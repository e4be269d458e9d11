"""Write the bad-input corpus's files: every hostile or odd file a caller may point a tool at.

Nothing here is committed as data: the files are generated (in well under a second, a few
MB in all) by the session fixture ``corpus`` in tests/conftest.py, or by hand:

    python tests/corpus/make_corpus.py DIR

Layout under DIR: ``allowed/`` is the folder a server under test may read and holds every
file case; ``outside/`` and ``allowed-more/`` (a sibling whose name starts with the allowed
folder's) hold a secret the server must never read. What each case must produce is the
test's business (tests/test_corpus.py), not this script's.
"""

from __future__ import annotations

import io
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository importable, as pytest does.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402

from tests.test_images import big_text, exif_rotated, noise, palette_alpha, png_header_only  # noqa: E402

Build = Callable[[Path], None]

#: frames in the many-frame GIF; only the first may ever be decoded
GIF_FRAMES = 10_000
#: (width, height) the EXIF-rotated JPEG has on disk; it must load as (20, 40)
EXIF_STORED = (40, 20)


def raw(data: bytes) -> Build:
    return lambda path: path.write_bytes(data)


def saved(make: Callable[[], Image.Image], fmt: str) -> Build:
    return lambda path: make().save(path, fmt)


def half_of(fmt: str) -> Build:
    whole = noise(fmt)
    return raw(whole[: len(whole) // 2])


def gif(screen: tuple[int, int], frames: int) -> bytes:
    """A GIF of ``frames`` 1x1 frames, written by hand: Pillow would merge identical frames,
    and takes seconds for ten thousand. The first frame is white, the others black."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\xff\xff\xff\x00\x00\x00")
    for n in range(frames):
        # graphic control (10 ms), image descriptor, then LZW data for one pixel of colour 0 or 1
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00"
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        out += b"\x02\x02\x44\x01\x00" if n == 0 else b"\x02\x02\x4c\x01\x00"
    return bytes(out + b"\x3b")


def compressed_text_bomb(path: Path) -> None:
    """A fine 8x8 PNG whose zTXt chunk inflates 48 KB into 50 MB of text."""
    info = PngImagePlugin.PngInfo()
    info.add_text("notes", "x" * 50_000_000, zip=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path, "PNG", pnginfo=info)


def sixteen_bit() -> Image.Image:
    return Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))


#: file name (in allowed/) -> how to write it
FILES: dict[str, Build] = {
    "ok.png": saved(lambda: Image.new("RGB", (32, 32), (200, 30, 30)), "PNG"),
    "empty.png": raw(b""),
    "truncated.png": half_of("PNG"),
    "truncated.jpg": half_of("JPEG"),
    "notes.png": raw(b"shopping list: eggs, milk, an image that is not one\n" * 20),
    "eps.png": raw(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"),
    "svg.png": raw(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10"/></svg>'),
    "psd.png": raw(b"8BPS\x00\x01" + b"\x00" * 20),
    "bomb.png": raw(png_header_only(100_000, 100_000)),
    "bomb.gif": raw(gif((65_535, 65_535), 1)),
    "text_bomb.png": compressed_text_bomb,
    "one.png": saved(lambda: Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
    "tall.png": saved(lambda: Image.new("L", (1, 20_000), 5), "PNG"),
    "frames.gif": raw(gif((1, 1), GIF_FRAMES)),
    "cmyk.jpg": saved(lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
    "gray16.png": saved(sixteen_bit, "PNG"),
    "palette_alpha.png": palette_alpha,
    "exif_rotated.jpg": exif_rotated,
    "text_chunk.png": big_text,
}


@dataclass(frozen=True)
class Corpus:
    root: Path
    #: the folder a server under test may read
    allowed: Path
    #: a folder beside it, holding secret.png
    outside: Path
    #: a sibling whose name starts with the allowed folder's, holding secret.png
    sibling: Path

    def file(self, name: str) -> str:
        return str(self.allowed / name)


def make(root: Path) -> Corpus:
    """Write every case under ``root`` (which must not exist yet, or be empty)."""
    corpus = Corpus(root, root / "allowed", root / "outside", root / "allowed-more")
    for folder in (corpus.allowed, corpus.outside, corpus.sibling):
        folder.mkdir(parents=True)
    secret = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 1, 1)).save(secret, "PNG")
    for folder in (corpus.outside, corpus.sibling):
        (folder / "secret.png").write_bytes(secret.getvalue())
    for name, build in FILES.items():
        build(corpus.allowed / name)
    (corpus.allowed / "folder.png").mkdir()
    os.mkfifo(corpus.allowed / "fifo.png")
    (corpus.allowed / "link.png").symlink_to(corpus.outside / "secret.png")
    (corpus.allowed / "linkdir").symlink_to(corpus.outside)
    return corpus


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/corpus/make_corpus.py DIR")
    print(make(Path(sys.argv[1])).root)

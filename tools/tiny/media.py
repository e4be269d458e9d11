"""PDFs and clips the tests and benchmarks make for themselves: good ones with known text, and
every hostile one issue 24 lists. Nothing here is committed as data; each builder writes in well under a second,
except the 100,000-frame clip (a few seconds), which ``hostile`` makes once per session.

Good PDFs come from Pillow (``save_all``: one JPEG page image each), the odd ones are written by
hand (an encrypted one, a zero-page one, a page that draws a 10,000 x 10,000 image) or by
PDFium (10,000 pages, a 200 x 200 inch page). Clips come from PyAV (H.264, VP9, GIF) and
opencv (mp4v, VP90), GIFs with many frames by hand.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: DejaVu where the machine has it (it reads well at small sizes), else Pillow's own font
FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf")

WORDS = (
    "invoice total amount paid order number date customer account balance report revenue shipping "
    "address payment method reference summary budget project delivery status pending approved review"
).split()


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONT_PATHS:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def page_lines(number: int, lines: int = 12) -> list[str]:
    """The text drawn on page ``number``: a header naming the page, then lines of words and numbers."""
    out = [f"Page {number} of the report"]
    for k in range(1, lines):
        words = [WORDS[(number * 7 + k * 3 + j) % len(WORDS)] for j in range(5)]
        out.append(f"{' '.join(words)} {number * 100 + k}")
    return out


def text_page(number: int, size: tuple[int, int] = (1275, 1650), font_px: int = 30, lines: int = 12) -> Image.Image:
    """A letter page at 150 dpi (by default) with ``page_lines`` drawn in black on white."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    face = font(font_px)
    for k, line in enumerate(page_lines(number, lines)):
        draw.text((100, 120 + k * round(font_px * 2)), line, fill="black", font=face)
    return image


def write_pdf(path: Path, pages: int = 3, size: tuple[int, int] = (1275, 1650), dpi: int = 150, **kw: int) -> Path:
    """A PDF of ``pages`` text pages, written by Pillow (each page one JPEG image)."""
    images = [text_page(n, size, **kw) for n in range(1, pages + 1)]
    images[0].save(path, "PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return path


# ---------------------------------------------------------------- PDFs by hand


def assemble(objects: Sequence[bytes], trailer: bytes = b"") -> bytes:
    """A PDF of ``objects`` (numbered from 1; object 1 the catalog) with its cross-reference table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return bytes(out)


def one_page(resources: bytes = b"<< >>", content: bytes = b"", more: Sequence[bytes] = ()) -> list[bytes]:
    stream = b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"
    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources %s /Contents 4 0 R >>" % resources,
        stream,
        *more,
    ]


def encrypted_pdf() -> bytes:
    """Encrypted with the standard handler (RC4, revision 2) and a user password nobody gave."""
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -44 >>" % (b"11" * 32, b"22" * 32)
    return assemble([*one_page(), encrypt], b"/Encrypt 5 0 R /ID [<%s> <%s>] " % (b"ab" * 16, b"ab" * 16))


def zero_page_pdf() -> bytes:
    return assemble([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"])


def big_image_pdf(side: int = 10_000) -> bytes:
    """A letter page that draws one ``side`` x ``side`` image (1-bit grey, zeros, a few KB compressed)."""
    data = zlib.compress(bytes(side * side // 8), 9)
    image = (
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray /BitsPerComponent 1 "
        b"/Filter /FlateDecode /Length %d >>\nstream\n" % (side, side, len(data)) + data + b"\nendstream"
    )
    return assemble(one_page(b"<< /XObject << /Im0 5 0 R >> >>", b"q 612 0 0 792 0 0 cm /Im0 Do Q", [image]))


def pdfium_pdf(pages: int, size_pt: tuple[float, float] = (612, 792)) -> bytes:
    """Blank pages written by PDFium itself (10,000 take about a second)."""
    import pypdfium2

    document = pypdfium2.PdfDocument.new()
    for _ in range(pages):
        document.new_page(*size_pt)
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    return buffer.getvalue()


# ---------------------------------------------------------------- clips


def frame(n: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame ``n``: a yellow square moving across a background whose colour changes, as RGB."""
    picture = np.zeros((height, width, 3), np.uint8)
    picture[:, :, 0] = (n * 13) % 255
    picture[:, :, 2] = 90
    x = (n * 3) % max(1, width - 12)
    picture[height // 4: height // 4 + 12, x: x + 12] = (250, 250, 40)
    return picture


def write_clip(
    path: Path, frames: int = 16, fps: float | Fraction = 8, size: tuple[int, int] = (64, 48), codec: str = "libx264",
    container: str | None = None, picture: Callable[[int, int, int], np.ndarray] = frame, faststart: bool = False,
) -> Path:
    """A clip written by PyAV: H.264 in MP4 by default; ``libvpx-vp9`` for WebM, ``gif`` for a GIF;
    ``faststart`` puts an MP4's index before its frames."""
    import av

    width, height = size
    rate = Fraction(fps).limit_denominator(100_000)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=options) as out:
        stream = out.add_stream(codec, rate=rate, options={"preset": "ultrafast"} if codec == "libx264" else {})
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        for n in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture(n, width, height), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_cv2_clip(path: Path, fourcc: str, frames: int = 16, fps: float = 8, size: tuple[int, int] = (64, 48)) -> Path:
    """A clip written by opencv (``mp4v`` in MP4, ``VP90`` in WebM); no frames at all where ``frames`` is 0."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    for n in range(frames):
        writer.write(cv2.cvtColor(frame(n, *size), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def repeated_frames(path: Path, frames: int, fps: int = 30, side: int = 16) -> Path:
    """An H.264 MP4 of ``frames`` black frames: one encoded I-frame, then one skip frame muxed again and
    again (100,000 frames in well under a second and about a megabyte; encoding each would take seconds)."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "bframes": "0"})
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        black = av.VideoFrame.from_ndarray(np.zeros((side, side, 3), np.uint8), format="rgb24")
        packets = [bytes(p) for _ in range(2) for p in stream.encode(black)] + [bytes(p) for p in stream.encode()]
        for n in range(frames):
            packet = av.Packet(packets[0] if n == 0 else packets[1])
            packet.stream, packet.pts, packet.dts = stream, n, n
            packet.time_base, packet.is_keyframe = Fraction(1, fps), n == 0
            out.mux(packet)
    return path


def many_frame_gif(frames: int, delay_cs: int = 4) -> bytes:
    """A 1x1 GIF of ``frames`` frames, ``delay_cs`` hundredths of a second each, written by hand
    (Pillow merges identical frames and takes seconds for thousands)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\xff\xff\xff\x00\x00\x00")
    for n in range(frames):
        out += b"\x21\xf9\x04\x00" + struct.pack("<H", delay_cs) + b"\x00\x00"
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        out += b"\x02\x02\x44\x01\x00" if n % 2 == 0 else b"\x02\x02\x4c\x01\x00"
    return bytes(out + b"\x3b")


def unknown_codec(clip: bytes) -> bytes:
    """An H.264 MP4 whose sample description names a codec nobody has (``avc1`` -> ``zzzz``)."""
    return clip.replace(b"avc1", b"zzzz")


def garbled(clip: bytes) -> bytes:
    """The clip with its middle third overwritten: headers intact, the frames' data noise."""
    third = len(clip) // 3
    noise = np.random.default_rng(0).integers(0, 256, third, dtype=np.uint8).tobytes()
    return clip[:third] + noise + clip[2 * third:]


# ---------------------------------------------------------------- the set the door tests share


#: file name -> (how to write it into a folder); the hostile ones are issue 24's list
def _bytes(make: Callable[[], bytes]) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(make())


def _half(build: Callable[[Path], object]) -> Callable[[Path], object]:
    def write(path: Path) -> None:
        build(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return write


def _garbled(path: Path) -> None:
    write_clip(path, frames=60, fps=30, size=(320, 240))
    path.write_bytes(garbled(path.read_bytes()))


def _unknown(path: Path) -> None:
    write_clip(path)
    path.write_bytes(unknown_codec(path.read_bytes()))


GOOD: dict[str, Callable[[Path], object]] = {
    "doc.pdf": lambda p: write_pdf(p, pages=3),
    "clip.mp4": lambda p: write_clip(p),
    "clip.webm": lambda p: write_clip(p, codec="libvpx-vp9"),
    "clip.gif": lambda p: write_clip(p, codec="gif"),
}

HOSTILE: dict[str, Callable[[Path], object]] = {
    "encrypted.pdf": _bytes(encrypted_pdf),
    "truncated.pdf": _half(lambda p: write_pdf(p, pages=2)),
    "zero-pages.pdf": _bytes(zero_page_pdf),
    "10000-pages.pdf": _bytes(lambda: pdfium_pdf(10_000)),
    "200-inch.pdf": _bytes(lambda: pdfium_pdf(1, (14_400, 14_400))),
    "100mp-image.pdf": _bytes(big_image_pdf),
    "no-frames.mp4": lambda p: write_cv2_clip(p, "mp4v", frames=0),
    "100000-frames.mp4": lambda p: repeated_frames(p, 100_000),
    "8k.mp4": lambda p: write_clip(p, frames=1, size=(7680, 4320)),
    "unknown-codec.mp4": _unknown,
    "garbled.mp4": _garbled,
    "hours.mp4": lambda p: write_clip(p, frames=5, fps=Fraction(1, 3600)),
    "10000-frames.gif": _bytes(lambda: many_frame_gif(10_000)),
}


def make_media(folder: Path, names: Sequence[str] | None = None) -> Path:
    """Write the good and hostile files (or only ``names``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in {**GOOD, **HOSTILE}.items():
        if names is None or name in names:
            build(folder / name)
    return folder

"""Draw detections, lay images out side by side, and encode PNGs for clients.

Drawing uses PIL's ImageDraw rather than OpenCV: the images are PIL images already
(no numpy round trip), and Pillow ships a scalable TrueType font with exact text
metrics (``ImageFont.load_default(size)``), while OpenCV's Hershey stroke fonts
read poorly on photos and offer no real text measurement.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .detections import Detection
from ..errors import InvalidRequest

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

BLACK: RGB = (0, 0, 0)
WHITE: RGB = (255, 255, 255)

#: Saturated colours from Sasha Trubetskoy's "20 distinct colours", without the
#: pale ones, which vanish on bright photos, and the greys, which vanish on most.
PALETTE: tuple[RGB, ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (255, 225, 25),  # yellow
    (0, 130, 200),  # blue
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (0, 128, 128),  # teal
    (170, 110, 40),  # brown
    (128, 0, 0),  # maroon
    (128, 128, 0),  # olive
    (0, 0, 128),  # navy
    (250, 190, 212),  # pink
)


def colors_for(labels: Iterable[str]) -> dict[str, RGB]:
    """A palette colour per label, the same one in every image and every process.

    The colour comes from a hash of the label, so "car" is drawn alike in each
    panel of a budget comparison. When two labels of one image hash to the same
    colour, the one later in sorted order takes the next free colour, so the
    result depends on the set of labels only, never on their order.
    """
    colors: dict[str, RGB] = {}
    taken: set[int] = set()
    for label in sorted(set(labels)):
        slot = zlib.crc32(label.encode()) % len(PALETTE)
        # past the palette's size colours must repeat; stop looking for a free one
        while slot in taken and len(taken) < len(PALETTE):
            slot = (slot + 1) % len(PALETTE)
        taken.add(slot)
        colors[label] = PALETTE[slot]
    return colors


def text_color(background: RGB) -> RGB:
    """Black or white, whichever has the higher WCAG contrast on ``background``."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in background)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # contrast with black is (L + 0.05) / 0.05, with white 1.05 / (L + 0.05)
    return BLACK if (luminance + 0.05) ** 2 > 1.05 * 0.05 else WHITE


def annotate(image: Image.Image, detections: Sequence[Detection]) -> Image.Image:
    """A new RGB copy of ``image`` with each detection's box and label drawn on it."""
    canvas = _to_rgb(image)
    draw = ImageDraw.Draw(canvas)
    line, font_size = _line_and_font(canvas.size)
    font = _font(font_size)
    colors = colors_for(d.label for d in detections)
    right, bottom = canvas.width - 1, canvas.height - 1
    # every box before any label, so that no outline crosses a label
    for d in detections:
        x1, y1, x2, y2 = d.box
        # a box may end at x = width, one past the last pixel column
        draw.rectangle(
            (min(x1, right), min(y1, bottom), min(x2, right), min(y2, bottom)), outline=colors[d.label], width=line
        )
    for d in detections:
        _draw_label(draw, d, colors[d.label], font, max(2, font_size // 4), canvas.width)
    return canvas


def _draw_label(
    draw: ImageDraw.ImageDraw, d: Detection, color: RGB, font: Font, pad: int, image_width: int
) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), d.label, font=font)
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    x1, y1 = d.box[0], d.box[1]
    x = max(0, min(x1, image_width - width))  # slide left rather than run off the right edge
    y = y1 - height if y1 >= height else y1  # above the box, or inside it at the top edge
    draw.rectangle((x, y, x + width - 1, y + height - 1), fill=color)
    draw.text((x + pad - left, y + pad - top), d.label, fill=text_color(color), font=font)


def _line_and_font(size: tuple[int, int]) -> tuple[int, int]:
    """Line width and font size for an image: readable from 200 px to 4000 px."""
    # the geometric mean keeps a wide panorama from getting text as tall as itself
    scale = math.sqrt(size[0] * size[1])
    return max(2, round(scale / 300)), max(11, round(scale / 40))


@lru_cache(maxsize=32)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy; transparent parts become white, as a viewer would show them."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert("RGB")
    return image.convert("RGB")


def fit_for_client(image: Image.Image, max_side: int = 1568, max_bytes: int = 1_000_000) -> bytes:
    """PNG bytes of ``image`` with its long side at most ``max_side`` and at most ``max_bytes``.

    Never upscales. Each further shrink starts again from the original, so the
    resampling blur does not add up.
    """
    if max_side < 1 or max_bytes < 1:
        raise InvalidRequest(f"max_side and max_bytes must be positive, not {max_side} and {max_bytes}.")
    source = image if image.mode in ("RGB", "RGBA", "L") else _to_rgb(image)
    width, height = source.size
    scale = min(1.0, max_side / max(width, height))
    while True:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        resized = source if size == source.size else source.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        resized.save(buffer, format="PNG")
        if buffer.tell() <= max_bytes:
            return buffer.getvalue()
        if size == (1, 1):
            raise InvalidRequest(f"max_bytes={max_bytes} is too small for any PNG image.")
        # PNG size follows the pixel count, so shrink by the square root of the excess,
        # with a margin, and by at least 10% so that the loop always ends
        scale *= min(0.9, 0.95 * math.sqrt(max_bytes / buffer.tell()))


def grid(images_with_titles: Sequence[tuple[str, Image.Image]], columns: int | None = None) -> Image.Image:
    """Titled panels on a white sheet, like a figure of subplots, to compare results.

    ``columns`` defaults to one row. Every cell is as large as the largest image,
    which is centred in it, at its own size so that boxes stay 1:1 with pixels.
    Sheet size: ``columns * cell_w + (columns + 1) * gap`` wide and
    ``rows * (title_h + cell_h) + (rows + 1) * gap`` high.
    """
    panels = [(title, _to_rgb(image)) for title, image in images_with_titles]
    if not panels:
        raise InvalidRequest("A grid needs at least one image.")
    if columns is not None and columns < 1:
        raise InvalidRequest(f"columns must be at least 1, not {columns}.")
    columns = min(columns or len(panels), len(panels))
    rows = math.ceil(len(panels) / columns)
    cell_w = max(image.width for _, image in panels)
    cell_h = max(image.height for _, image in panels)
    _, font_size = _line_and_font((cell_w, cell_h))
    pad = max(2, font_size // 4)
    gap = 2 * pad
    title_h = _font(font_size).getbbox("Ag_")[3] + 2 * pad
    sheet = Image.new(
        "RGB", (columns * cell_w + (columns + 1) * gap, rows * (title_h + cell_h) + (rows + 1) * gap), WHITE
    )
    draw = ImageDraw.Draw(sheet)
    for index, (title, image) in enumerate(panels):
        row, column = divmod(index, columns)
        left = gap + column * (cell_w + gap)
        top = gap + row * (title_h + cell_h + gap)
        font = _font(_fitting_size(title, font_size, cell_w))
        text_left, _, text_right, _ = draw.textbbox((0, 0), title, font=font)
        draw.text((left + (cell_w - (text_right - text_left)) // 2 - text_left, top + pad), title, fill=BLACK, font=font)
        sheet.paste(image, (left + (cell_w - image.width) // 2, top + title_h + (cell_h - image.height) // 2))
    return sheet


def _fitting_size(text: str, size: int, width: int) -> int:
    """The font size, at most ``size``, at which ``text`` fits ``width``; text width grows with size."""
    length = _font(size).getlength(text)
    return size if length <= width else max(8, math.floor(size * width / length))

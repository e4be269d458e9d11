"""PDF pages as pictures, through PDFium (pypdfium2).

Everything a page costs is known before it is rendered: the page count when the document
opens, each page's size in points (``get_page_size``, no page load), and the pixel size of
every image embedded in a page (read from the page's objects, not decoded). So a 10,000-page
file, a 200 x 200 inch page or a page holding a 100-megapixel scan is refused in one line
before any pixel is drawn. PDFium is not thread-safe: every call into it holds one lock.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from PIL import Image

from ..errors import ImageError
from .policy import Limits
from .shown import capital

#: the lowest resolution at which 8-point print is still a few pixels tall; below it a page is refused
MIN_DPI = 72.0
#: past this a page gains nothing a model or a reader can use
MAX_DPI = 300.0
#: what reading with the model (ocr, tiles) renders at: 6-point print is 12 px tall
READ_DPI = 150.0
#: what the offline engine reads at: a letter page stays under PP-OCR's 2000 px, so it is read whole.
#: At 200 dpi (tiled) it read no more of a generated 5-page PDF and kept fewer spaces between words.
OFFLINE_DPI = READ_DPI
#: points per inch: PDF sizes are in points
POINTS = 72.0

_LOCK = threading.Lock()
_EMPTY_TREE = re.compile(rb"/Count\s*0\b")
_PAGES = re.compile(rb"/Count\s*[1-9]")


@contextmanager
def pdfium_lock() -> Iterator[Any]:
    """The pypdfium2 module, held for one caller at a time."""
    with _LOCK:
        import pypdfium2

        yield pypdfium2


class Pdf:
    """An opened PDF: its page count and page sizes, read without rendering; pages rendered one at a time."""

    def __init__(self, data: bytes, what: str) -> None:
        self.what = what
        with pdfium_lock() as pdfium:
            try:
                # Bytes in memory: the document was read within the byte limit, never reopened by path.
                self._doc = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as error:
                raise open_error(error, data, what) from None
            self.pages = len(self._doc)
        if self.pages == 0:
            raise ImageError(f"{capital(what)} holds no pages.")

    def size_pt(self, index: int) -> tuple[float, float]:
        """(width, height) of page ``index`` (from 0) in points, as it is shown (its rotation applied)."""
        with pdfium_lock():
            width, height = self._doc.get_page_size(index)
        return float(width), float(height)

    def embedded_pixels(self, index: int) -> list[tuple[int, int]]:
        """The pixel sizes of the images drawn on page ``index``, read from the page, none decoded."""
        with pdfium_lock() as pdfium:
            from pypdfium2 import raw

            page = self._doc[index]
            try:
                return [tuple(obj.get_px_size()) for obj in page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE], max_depth=4)]
            except pdfium.PdfiumError:
                return []
            finally:
                page.close()

    def render(self, index: int, dpi: float) -> Image.Image:
        """Page ``index`` at ``dpi``, as RGB on white."""
        with pdfium_lock() as pdfium:
            page = self._doc[index]
            try:
                bitmap = page.render(scale=dpi / POINTS, fill_color=(255, 255, 255, 255))
                picture = bitmap.to_pil().convert("RGB")
            except pdfium.PdfiumError:
                raise ImageError(f"Page {index + 1} of {self.what} could not be rendered; the file may be damaged.") from None
            finally:
                page.close()
        return picture

    def close(self) -> None:
        with pdfium_lock():
            self._doc.close()


def open_error(error: Any, data: bytes, what: str) -> ImageError:
    """PDFium's reason for not opening a document, as one line a person can act on."""
    from pypdfium2 import raw

    # PDFium refuses a document whose page tree is empty without setting an error of its own (the
    # code left is the previous failure's), so the page tree is looked at first.
    if _EMPTY_TREE.search(data) and not _PAGES.search(data) and b"%%EOF" in data[-1024:]:
        return ImageError(f"{capital(what)} holds no pages.")
    code = getattr(error, "err_code", None)
    if b"/Encrypt" in data and code == raw.FPDF_ERR_PASSWORD:
        return ImageError(f"{capital(what)} is encrypted with a password; send an unprotected copy.")
    if b"/Encrypt" in data and code == raw.FPDF_ERR_SECURITY:
        return ImageError(f"{capital(what)} uses a security handler that cannot be opened; send an unprotected copy.")
    return ImageError(f"{capital(what)} is a damaged or truncated PDF and could not be opened; re-export or re-send it.")


def page_pixels(size_pt: tuple[float, float], dpi: float) -> tuple[int, int]:
    """(width, height) in pixels of a page of ``size_pt`` points rendered at ``dpi``, as PDFium rounds them."""
    return max(1, round(size_pt[0] * dpi / POINTS)), max(1, round(size_pt[1] * dpi / POINTS))


def fit_dpi(size_pt: tuple[float, float], wanted: float, limits: Limits, label: str, notes: list[str]) -> float:
    """``wanted`` dpi within [MIN_DPI, MAX_DPI], lowered (with a note) where the page would pass the
    rendered-pixel limit; refused where even MIN_DPI passes it."""
    dpi = min(max(wanted, MIN_DPI), MAX_DPI)
    width_in, height_in = size_pt[0] / POINTS, size_pt[1] / POINTS
    area = width_in * height_in
    most = (limits.max_render_pixels / area) ** 0.5 if area > 0 else MAX_DPI
    if most >= dpi:
        return dpi
    if most < MIN_DPI:
        w, h = page_pixels(size_pt, MIN_DPI)
        raise ImageError(
            f"{capital(label)} is {width_in:,.0f} x {height_in:,.0f} inches: even at {MIN_DPI:.0f} dpi it would be "
            f"{w:,} x {h:,} pixels, over the {limits.max_render_pixels / 1e6:g}-megapixel limit; crop it or "
            "split it into smaller pages."
        )
    lowered = float(int(most))
    notes.append(f"{label} rendered at {lowered:g} dpi, not {dpi:g}, to stay within {limits.max_render_pixels / 1e6:g} megapixels")
    return lowered


def check_embedded(pdf: Pdf, index: int, limits: Limits, label: str) -> None:
    """Refuse a page that draws an image over the pixel limit: PDFium would decode it whole."""
    for width, height in pdf.embedded_pixels(index):
        if width * height > limits.max_pixels:
            raise ImageError(
                f"{capital(label)} holds an embedded image of {width:,} x {height:,} pixels, over the "
                f"{limits.max_pixels:,}-pixel limit; send a copy with smaller images."
            )


def parse_pages(text: str, count: int, param: str = "pages") -> list[int]:
    """Page numbers (from 1) in ``text``: ``3``, ``2-5``, ``1,3,7-9``, ``4-`` (to the end) or ``all``;
    each within the document's ``count`` pages, in order, once each."""
    text = text.strip().lower()
    if text in ("", "all"):
        return list(range(1, count + 1))
    chosen: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d{1,7})(?:\s*-\s*(\d{1,7})?)?", part)
        if not match:
            raise ImageError(
                f"{{param}} {part[:20]!r} is not a page selection; write pages as 3, 2-5 or 1,3,7-9.", param=param
            )
        first = int(match[1])
        last = first if "-" not in part else (int(match[2]) if match[2] else count)
        if first < 1 or last < first:
            raise ImageError(f"{{param}} {part!r} is not a range of pages from 1 up, such as 2-5.", param=param)
        if last > count:
            raise ImageError(
                f"{{param}} asks for page {last}, and the document has {count} page{'s' if count != 1 else ''}.",
                param=param,
            )
        chosen.extend(range(first, last + 1))
    return list(dict.fromkeys(chosen))


def check_page_count(selected: Sequence[int], count: int, limits: Limits, what: str) -> None:
    if len(selected) > limits.max_pages:
        which = "the whole of" if len(selected) == count else "the selection of"
        raise ImageError(
            f"{capital(which)} {what} is {len(selected):,} pages, more than the {limits.max_pages} one call may read; "
            f"choose pages, for example {{param}} 1-{limits.max_pages}.", param="pages",
        )

"""Reading text without a vision-language model: PP-OCR through ``rapidocr-onnxruntime``.

For machines with no GPU or no model weights. The package's wheel ships PP-OCR's
detection, orientation and recognition models as ONNX files, so it reads with no
download. It finds text lines as boxes and reads each one; this module puts the lines
in reading order and returns them in the shared detection type beside the text.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .tasks import Stopwatch
from .detections import Detection, from_pixel_box
from .errors import Unsupported
from .results import Timings

#: ``ocr(engine=...)``: the loaded vision-language model, or the offline OCR
ENGINES = ("vlm", "rapidocr")
RAPIDOCR_PACKAGE = "rapidocr-onnxruntime"
#: rapidocr 1.4's max_side_len: it shrinks a larger image to this many pixels on its long side
DEFAULT_MAX_SIDE = 2000
#: one piece of text the detector found: its (x1, y1, x2, y2) box in pixels, and what it says
Piece = tuple[tuple[float, float, float, float], str]


@dataclass
class Reading:
    #: rows top to bottom, separated by newlines; pieces of one row left to right, by spaces
    text: str
    #: one box per piece the detector found, in the same order as the text
    lines: list[Detection]
    timings: Timings


def reading_order(boxes: Sequence[tuple[float, float, float, float]]) -> list[list[int]]:
    """Indices of ``boxes`` (x1, y1, x2, y2) grouped in rows, rows top to bottom, each left to right.

    A box joins a row when its vertical centre falls within the row's first box, or that
    box's centre within it: a line the detector split in two (a wide gap between words)
    is one row again, while a tall box cannot chain separate rows together.
    """
    rows: list[list[int]] = []
    for i in sorted(range(len(boxes)), key=lambda i: ((boxes[i][1] + boxes[i][3]) / 2, boxes[i][0])):
        x1, y1, x2, y2 = boxes[i]
        if rows:
            _, ay1, _, ay2 = boxes[rows[-1][0]]
            if ay1 <= (y1 + y2) / 2 <= ay2 or y1 <= (ay1 + ay2) / 2 <= y2:
                rows[-1].append(i)
                continue
        rows.append([i])
    return [sorted(row, key=lambda i: boxes[i][0]) for row in rows]


class RapidOcr:
    """PP-OCR (v4 in rapidocr-onnxruntime 1.4), loaded on first use and kept."""

    name = "rapidocr"
    model = RAPIDOCR_PACKAGE

    def __init__(self) -> None:
        self._engine: Any = None
        # One load, and one image at a time: the engine keeps per-call state on itself.
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("rapidocr_onnxruntime") is not None

    def _load(self) -> Any:
        if self._engine is None:
            if not self.available():
                raise Unsupported(
                    f"The rapidocr engine needs the {RAPIDOCR_PACKAGE} package; install it with "
                    "`pip install 'vlm-agent[ocr]'`, or read with engine 'vlm'."
                )
            from rapidocr_onnxruntime import RapidOCR

            self._engine = RapidOCR()
        return self._engine

    @property
    def max_side(self) -> int:
        """The longest side the engine reads at full size: a larger image is shrunk to it first."""
        engine = self._load()
        return int(getattr(engine, "max_side_len", DEFAULT_MAX_SIDE) or DEFAULT_MAX_SIDE)

    def pieces(self, image: Image.Image) -> list[Piece]:
        """Every text piece the detector found, with its box in pixels of ``image``, in no order."""
        with self._lock:
            engine = self._load()
            # A PIL image, not an array: the engine then knows it is RGB and converts to BGR itself.
            found, _ = engine(image)
        pieces: list[Piece] = []
        for quad, text, _score in found or []:
            text = " ".join(str(text).split())
            if text:
                xs, ys = [p[0] for p in quad], [p[1] for p in quad]
                pieces.append(((min(xs), min(ys), max(xs), max(ys)), text))
        return pieces

    def recognise(self, crops: Sequence[Image.Image]) -> list[str]:
        """The text of each crop, read as one line (no detection): for pieces put together from tiles."""
        if not crops:
            return []
        import numpy as np

        with self._lock:
            engine = self._load()
            # The recogniser wants BGR arrays, as the engine's own crops are.
            arrays = [np.ascontiguousarray(np.asarray(crop.convert("RGB"))[:, :, ::-1]) for crop in crops]
            results, _ = engine.text_rec(arrays)
        return [" ".join(str(text).split()) for text, _score in results]

    def read(self, image: Image.Image) -> Reading:
        watch = Stopwatch()
        self._load()
        preprocess_ms = watch.lap()
        found = self.pieces(image)
        generate_ms = watch.lap()
        text, lines = assemble(found, image.size)
        timings = Timings(preprocess_ms=preprocess_ms, generate_ms=generate_ms, total_ms=watch.total())
        return Reading(text=text, lines=lines, timings=timings)


def assemble(pieces: Sequence[Piece], size: tuple[int, int]) -> tuple[str, list[Detection]]:
    """The text in reading order and one box per piece, in the same order."""
    rows = reading_order([box for box, _ in pieces])
    lines = [from_pixel_box(pieces[i][1], pieces[i][0], size, pieces[i][1]) for row in rows for i in row]
    text = "\n".join(" ".join(pieces[i][1] for i in row) for row in rows)
    return text, lines


_RAPIDOCR = RapidOcr()


def rapidocr() -> RapidOcr:
    """The process's one RapidOcr: its models load once, on first use."""
    return _RAPIDOCR

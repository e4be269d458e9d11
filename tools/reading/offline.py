"""Reading text without a vision-language model: PP-OCR through ``rapidocr-onnxruntime``.

For machines with no GPU or no model weights. The package's wheel ships PP-OCR's
detection, orientation and recognition models as ONNX files, so it reads with no
download. Its detector finds text lines (on a copy shrunk to ``max_side``); each line is
then read from the image's own pixels, long lines in parts, and this module puts the
lines in reading order and returns them in the shared detection type beside the text.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .. import cancel
from ..tasks import Stopwatch
from ..boxes.detections import Detection, from_pixel_box
from ..errors import InvalidRequest, Unsupported
from ..results import Timings

#: ``ocr(engine=...)``: the loaded vision-language model, or the offline OCR
ENGINES = ("vlm", "rapidocr")
RAPIDOCR_PACKAGE = "rapidocr-onnxruntime"
#: rapidocr 1.4's max_side_len: it shrinks a larger image to this many pixels on its long side
DEFAULT_MAX_SIDE = 2000
#: one piece of text the detector found: its (x1, y1, x2, y2) box in pixels, and what it says
Piece = tuple[tuple[float, float, float, float], str]
#: the four corners of a piece of text, clockwise from its top left, in pixels
Quad = tuple[tuple[float, float], ...]
#: rapidocr's own text_score: a piece read with less confidence is noise, not text
TEXT_SCORE = 0.5
#: the detector keeps a region whose mean text probability reaches this (rapidocr's default is 0.5,
#: which drops whole lines of 10 px text; what is not text is then read with low confidence and
#: dropped by TEXT_SCORE)
BOX_THRESHOLD = 0.3
#: the recogniser's time grows faster than a line's length, and every new width costs extra the
#: first time (a tiled 4000x3000 page of 14 px text: 14 s in parts, 67 s in whole lines), so a
#: line wider than this many heights is read in parts
MAX_ASPECT = 30
#: a blank run of columns at least this share of the crop's height wide is a gap between words (the
#: detector's box is about 1.6 times the text's height, a space about a third of it)
WORD_GAP = 0.12
#: a column whose brightness spreads less than this share of the line's is blank
BLANK_SPREAD = 0.25


#: rapidocr 1.4's min_side_len: it stretches a smaller image to this many pixels on its short side
DEFAULT_MIN_SIDE = 30
#: rapidocr 1.4's width_height_ratio: it pads a wider strip to a quarter of its width before looking
WIDTH_HEIGHT_RATIO = 8
#: a piece this many times wider than tall says which way the page's lines run
SKEW_ASPECT = 2
#: the most pixels the detector is given to search (600 MB of RGB): a strip is padded (``strip_padded``)
#: so that it survives the engine's shrink, 1 x 20,000 px into 5,000 x 20,000, and any image within the
#: decoder's 40 megapixels and 20:1 stays within this; a strip of 1 x 40,000,000 px would become 10
#: million x 40 million. Read in tiles ('auto': none longer than ``max_side``), a strip needs no padding
MAX_SEARCH_PIXELS = 200_000_000
#: rapidocr 1.4's rec_batch_num and cls_batch_num: the pieces its recogniser and its angle classifier
#: take at once, and so the most a cancelled call reads after the cancel
DEFAULT_BATCH = 6


def bounds(quad: Quad) -> tuple[float, float, float, float]:
    """The (x1, y1, x2, y2) box around a quadrilateral."""
    xs, ys = [p[0] for p in quad], [p[1] for p in quad]
    return min(xs), min(ys), max(xs), max(ys)


def skew(quads: Sequence[Quad]) -> float:
    """The angle (radians, clockwise in image coordinates) the page's lines run at: the median of
    the top edges of the pieces clearly wider than tall; 0 without any.

    On a tilted page the upright boxes around neighbouring lines overlap each other, so lines are
    ordered and joined in the page's own frame (``level``), not by those boxes."""
    angles = []
    for quad in quads:
        (x1, y1), (x2, y2) = quad[0], quad[1]
        width, height = math.hypot(x2 - x1, y2 - y1), math.hypot(quad[3][0] - x1, quad[3][1] - y1)
        if width >= SKEW_ASPECT * height and x2 > x1:
            angles.append(math.atan2(y2 - y1, x2 - x1))
    return statistics.median(angles) if angles else 0.0


def level(quad: Quad, angle: float) -> tuple[float, float, float, float]:
    """The box around ``quad`` turned by ``-angle`` about the origin: in the frame where the lines run level."""
    cos, sin = math.cos(angle), math.sin(angle)
    return bounds(tuple((x * cos + y * sin, -x * sin + y * cos) for x, y in quad))


def unlevel(box: Sequence[float], angle: float) -> Quad:
    """A box of the level frame as the quadrilateral it is on the page (``level`` undone)."""
    cos, sin = math.cos(angle), math.sin(angle)
    x1, y1, x2, y2 = box
    return tuple((x * cos - y * sin, x * sin + y * cos) for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2)))


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

            engine = RapidOCR()
            post = getattr(getattr(engine, "text_det", None), "postprocess_op", None)
            if post is not None and hasattr(post, "box_thresh"):
                post.box_thresh = BOX_THRESHOLD
            self._engine = engine
        return self._engine

    @property
    def max_side(self) -> int:
        """The longest side the engine reads at full size: a larger image is shrunk to it first."""
        engine = self._load()
        return int(getattr(engine, "max_side_len", DEFAULT_MAX_SIDE) or DEFAULT_MAX_SIDE)

    def detect(self, image: Image.Image) -> list[Quad]:
        """Where the detector finds text: one quadrilateral per piece, in pixels of ``image``.

        The engine shrinks a large image before it looks (``max_side``) and maps the corners back."""
        with self._lock:
            engine = self._load()
            min_side = int(getattr(engine, "min_side_len", DEFAULT_MIN_SIDE) or DEFAULT_MIN_SIDE)
            ratio = float(getattr(engine, "width_height_ratio", WIDTH_HEIGHT_RATIO) or WIDTH_HEIGHT_RATIO)
            padded = strip_padded(image, self.max_side, min_side, ratio if ratio > 0 else WIDTH_HEIGHT_RATIO)
            found, _ = engine(padded, use_cls=False, use_rec=False)
        width, height = image.size
        # What the padding added lies right of or below the image: a quad there is not on it, and
        # one that reaches into it ends at the image's edge.
        return [
            tuple((min(float(x), width), min(float(y), height)) for x, y in quad)  # type: ignore[misc]
            for quad in found or []
            if min(x for x, _ in quad) < width and min(y for _, y in quad) < height
        ]

    def searched_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size of the canvas the detector searches for an image of ``size`` (``strip_padded``)."""
        engine = self._load()
        min_side = int(getattr(engine, "min_side_len", DEFAULT_MIN_SIDE) or DEFAULT_MIN_SIDE)
        ratio = float(getattr(engine, "width_height_ratio", WIDTH_HEIGHT_RATIO) or WIDTH_HEIGHT_RATIO)
        return padded_size(size, self.max_side, min_side, ratio if ratio > 0 else WIDTH_HEIGHT_RATIO)

    def check_searchable(self, sizes: Sequence[tuple[int, int]], tiled: bool) -> None:
        """Refuse, before any work, pieces (the page, or its tiles) too long and thin to search."""
        for size in sizes:
            width, height = self.searched_size(size)
            if width * height > MAX_SEARCH_PIXELS:
                what = f"The {size[0]} x {size[1]} px tiles of this image are" if tiled else (
                    f"This {size[0]} x {size[1]} px image is"
                )
                raise InvalidRequest(
                    f"{what} too long and thin for the rapidocr engine to search whole (padded, "
                    f"{'each' if tiled else 'it'} would be {width:,} x {height:,} px); read it with {{param}} 'auto', "
                    "or crop it into shorter parts.",
                    param="tiles",
                )

    def read_quads(self, image: Image.Image, quads: Sequence[Quad]) -> list[tuple[str, float]]:
        """The text of each quadrilateral of ``image`` and the recogniser's confidence, read from
        ``image``'s own pixels (never a shrunk copy), in one batch.

        PP-OCR's angle classifier turns some long upright lines upside down (it sees only their
        start, squeezed), and such a line is then lost. So its verdict is checked: a line it would
        turn, or one read with low confidence, is read both ways and the surer reading wins.
        """
        if not quads:
            return []
        import numpy as np

        with self._lock:
            engine = self._load()
            # BGR, as the engine's own crops are; the crop follows the quadrilateral, tilted text included.
            bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
            crops = engine.get_crop_img_list(bgr, [np.array(q, dtype=np.float32) for q in quads])
            readings = _recognise(engine, crops)
            verdicts = _classify(engine, crops)
            threshold = float(getattr(engine.text_cls, "cls_thresh", 0.9))
            doubtful = [
                i for i, ((_, score), (label, sure)) in enumerate(zip(readings, verdicts))
                if score < TEXT_SCORE or ("180" in str(label) and float(sure) > threshold)
            ]
            if doubtful:
                turned = _recognise(engine, [np.ascontiguousarray(np.rot90(crops[i], 2)) for i in doubtful])
                for i, reading in zip(doubtful, turned):
                    if reading[1] > readings[i][1]:
                        readings[i] = reading
        return readings

    def read(self, image: Image.Image) -> Reading:
        watch = Stopwatch()
        self._load()
        preprocess_ms = watch.lap()
        quads = self.detect(image)
        readings = self.read_quads(image, quads)
        generate_ms = watch.lap()
        text, lines = arrange(quads, readings, image.size)
        timings = Timings(preprocess_ms=preprocess_ms, generate_ms=generate_ms, total_ms=watch.total())
        return Reading(text=text, lines=lines, timings=timings)


def arrange(
    quads: Sequence[Quad], readings: Sequence[tuple[str, float]], size: tuple[int, int], angle: float | None = None
) -> tuple[str, list[Detection]]:
    """The pieces read with confidence, in reading order: the text and one box each. Rows are found
    in the frame where the page's lines run level (``angle``, else measured from these pieces)."""
    kept = [(quad, text) for quad, (text, score) in zip(quads, readings) if text and score >= TEXT_SCORE]
    if angle is None:
        angle = skew([quad for quad, _ in kept])
    return assemble([(bounds(q), t) for q, t in kept], size, [level(q, angle) for q, _ in kept])


def _recognise(engine: Any, crops: Sequence[Any]) -> list[tuple[str, float]]:
    """Each crop's text and confidence (the least of its parts'), long lines read in parts."""
    import numpy as np

    parts: list[Any] = []
    plans: list[list[bool]] = []
    for crop in crops:
        where = cuts(blank_columns(crop), crop.shape[0])
        at = [0] + [column for column, _ in where] + [crop.shape[1]]
        parts.extend(np.ascontiguousarray(crop[:, a:b]) for a, b in zip(at, at[1:]))
        plans.append([gap for _, gap in where])
    results = _recognise_parts(engine, parts)
    readings: list[tuple[str, float]] = []
    k = 0
    for gaps in plans:
        texts = [" ".join(str(text).split()) for text, _ in results[k : k + len(gaps) + 1]]
        score = min(float(s) for _, s in results[k : k + len(gaps) + 1])
        k += len(gaps) + 1
        line = texts[0]
        for gap, text in zip(gaps, texts[1:]):
            line = f"{line} {text}" if gap and line and text and not (_wide(line[-1]) and _wide(text[0])) else line + text
        readings.append((line.strip(), score))
    return readings


def _recognise_parts(engine: Any, parts: Sequence[Any]) -> list[tuple[str, float]]:
    """``engine.text_rec`` over ``parts``, one of its batches at a time, a cancelled call stopping in between.

    The recogniser sorts what it is given by width (this same ``argsort``) and pads each batch of
    ``rec_batch_num`` to its widest; given each of those batches alone, it reads every piece as a
    single call over all of them would."""
    import numpy as np

    step = max(1, int(getattr(engine.text_rec, "rec_batch_num", DEFAULT_BATCH) or DEFAULT_BATCH))
    order = [int(i) for i in np.argsort(np.array([p.shape[1] / float(p.shape[0]) for p in parts]))]
    results: list[Any] = [("", 0.0)] * len(parts)
    for start in range(0, len(order), step):
        cancel.check()
        batch = order[start : start + step]
        found, _ = engine.text_rec([parts[i] for i in batch])
        for i, result in zip(batch, found):
            results[i] = result
    return results


def _classify(engine: Any, crops: Sequence[Any]) -> list[Any]:
    """The angle classifier's verdict on each crop, one of its batches at a time, a cancelled call stopping
    in between (it scales every crop to one size, so what is batched with what does not matter)."""
    step = max(1, int(getattr(engine.text_cls, "cls_batch_num", DEFAULT_BATCH) or DEFAULT_BATCH))
    verdicts: list[Any] = []
    for start in range(0, len(crops), step):
        cancel.check()
        _, found, _ = engine.text_cls(list(crops[start : start + step]))
        verdicts.extend(found)
    return verdicts


def _wide(char: str) -> bool:
    """CJK and other wide characters: written without spaces between words."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def blank_columns(crop: Any) -> list[bool]:
    """Per column of a line's crop, whether it holds no ink: its spread of brightness is small
    against the line's own (dark on light and light on dark alike)."""
    import numpy as np

    gray = crop.mean(axis=2) if crop.ndim == 3 else crop.astype(float)
    low, high = np.percentile(gray, (5, 95))
    spread = gray.max(axis=0) - gray.min(axis=0)
    return [bool(v) for v in spread < BLANK_SPREAD * max(high - low, 1.0)]


def cuts(blank: Sequence[bool], height: int, max_aspect: float = MAX_ASPECT) -> list[tuple[int, bool]]:
    """Where to cut a line ``height`` px tall, whose columns ``blank`` describes, into parts at most
    ``max_aspect`` heights wide: (column, whether the cut lies in a gap between words).

    Each cut is the middle of the widest blank run in the second half of the part's allowance (a
    gap between words is wider than one between letters); with no blank column there, the line is
    cut at the allowance, and the two readings are joined without a space.
    """
    limit = max(2, int(max_aspect * height))
    runs: list[tuple[int, int]] = []
    start = None
    for x, empty in enumerate([*blank, False]):
        if empty and start is None:
            start = x
        elif not empty and start is not None:
            runs.append((start, x))
            start = None
    out: list[tuple[int, bool]] = []
    left = 0
    while len(blank) - left > limit:
        window = [r for r in runs if left + limit // 2 <= (r[0] + r[1]) // 2 <= left + limit]
        if window:
            a, b = max(window, key=lambda r: (r[1] - r[0], r[0]))
            at, gap = (a + b) // 2, b - a >= WORD_GAP * height
        else:
            at, gap = left + limit, False
        out.append((at, gap))
        left = at
    return out


def strip_padded(image: Image.Image, max_side: int, min_side: int, ratio: float = WIDTH_HEIGHT_RATIO) -> Image.Image:
    """``image``, padded on its short side (right or bottom, in its own median colour) where the engine
    would otherwise fail or blow up on it.

    The engine shrinks the long side to ``max_side``, stretches the short side to ``min_side``,
    and its detector then stretches the short side to 736 px: a strip 8 px tall and 2000 wide
    became 7488x1872 to search (seconds per tile), a column 1 px wide and 20000 tall 736x46000
    (gigabytes), and a 1 px strip shrank to nothing (an error). The engine pads a strip wider than
    ``ratio`` times its height to a quarter of its width; here any strip, tall ones too, is padded
    so, and enough that its short side still holds ``min_side`` once the long one is shrunk. The
    page's coordinates are unchanged: the padding comes after them.
    """
    size = padded_size(image.size, max_side, min_side, ratio)
    if size == image.size:
        return image
    import numpy as np

    rgb = image.convert("RGB")
    fill = tuple(int(v) for v in np.median(np.asarray(rgb).reshape(-1, 3), axis=0))
    canvas = Image.new("RGB", size, fill)
    canvas.paste(rgb, (0, 0))
    return canvas


def padded_size(size: tuple[int, int], max_side: int, min_side: int, ratio: float = WIDTH_HEIGHT_RATIO) -> tuple[int, int]:
    """The size ``strip_padded`` makes of an image of ``size``."""
    width, height = size
    long_side, short_side = max(width, height), min(width, height)
    need = math.ceil(long_side * min_side / max_side)
    if long_side > ratio * short_side:
        need = max(need, math.ceil(2 * long_side / ratio))
    if short_side >= need:
        return size
    need = max(need, min_side)
    return (width, need) if width >= height else (need, height)


def assemble(
    pieces: Sequence[Piece], size: tuple[int, int], order: Sequence[tuple[float, float, float, float]] | None = None
) -> tuple[str, list[Detection]]:
    """The text in reading order and one box per piece, in the same order; ``order`` gives the boxes
    to order them by (those of a tilted page's level frame), else the pieces' own."""
    rows = reading_order(list(order) if order is not None else [box for box, _ in pieces])
    lines = [from_pixel_box(pieces[i][1], pieces[i][0], size, pieces[i][1]) for row in rows for i in row]
    text = "\n".join(" ".join(pieces[i][1] for i in row) for row in rows)
    return text, lines


_RAPIDOCR = RapidOcr()


def rapidocr() -> RapidOcr:
    """The process's one RapidOcr: its models load once, on first use."""
    return _RAPIDOCR

"""``python -m bench.ocr_tiles``: real OCR on generated pages, tiled against untiled (rapidocr).

Each page is drawn here with known text (Latin or CJK, at a given pixel size), read three
ways and scored against what was drawn:

- as written: the rapidocr engine's own call with its defaults (the baseline);
- whole: vlm-agent's rapidocr reader with tiles off (the engine's detector on the shrunk
  page, keeping fainter regions, and each line read from the page's own pixels);
- tiled: vlm-agent's reader with ``--tiles auto`` (text found tile by tile at full size).

The scores:

- recovered: characters of the drawn text found, in order, in the reading (difflib's
  matching blocks, whitespace ignored, since a reader's spacing is not the page's); the
  drawn text is taken in the reader's order, rows across both columns;
- error: 1 - difflib's similarity ratio of the two (0 is a perfect reading).

    python -m bench.ocr_tiles                        # the default matrix: 18 pages, minutes each on 2 cores
    python -m bench.ocr_tiles --sizes 4000x3000 --fonts 14 --scripts latin --fill 0.2 --markdown table.md

A script whose font is not on the machine is skipped with a message saying which font to install.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from tools.reading.offline import RapidOcr, assemble, bounds, rapidocr
from tools.jobs.tiles import rapidocr_tiled

#: fonts tried per script, first found wins (Debian/Ubuntu paths: fonts-dejavu-core, fonts-noto-cjk)
FONTS = {
    "latin": [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/Library/Fonts/Arial.ttf",
    ],
    "cjk": [
        "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
        "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    ],
}
INSTALL_HINT = {"latin": "fonts-dejavu-core", "cjk": "fonts-noto-cjk"}

WORDS = (
    "invoice total amount paid order number date customer account balance report quarterly revenue "
    "shipping address payment method reference summary budget project delivery status pending approved "
    "review section table figure results method analysis sample value average median growth market price"
).split()
#: common simplified Chinese characters, which PP-OCR's Chinese recogniser reads
HANZI = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
    "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还"
    "因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结"
)

DEFAULT_SIZES = ("2000x1500", "3000x2250", "4000x3000")
DEFAULT_FONTS = (10, 14, 20)


@dataclass
class Page:
    image: Image.Image
    text: str
    script: str
    font_px: int


def font_path(script: str) -> str | None:
    return next((path for path in FONTS[script] if Path(path).exists()), None)


def make_page(size: tuple[int, int], font_px: int, script: str, seed: int = 0, fill: float = 1.0) -> Page | None:
    """A white page of ``size`` with lines of text at ``font_px`` down ``fill`` of its height; None when
    no font is found. A page partly filled is shrunk by the reader exactly as a full one, for less reading."""
    path = font_path(script)
    if path is None:
        return None
    rng = random.Random(f"{seed}-{size}-{font_px}-{script}")
    font = ImageFont.truetype(path, font_px)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    margin = max(40, size[0] // 25)
    # Two columns, as most pages have: lines about a tile's width, not the whole page's.
    gutter = margin
    column = (size[0] - 2 * margin - gutter) // 2
    step = round(font_px * 1.8)
    columns: list[list[str]] = []
    for left in (margin, margin + column + gutter):
        lines: list[str] = []
        columns.append(lines)
        y = margin
        while y + step < margin + fill * (size[1] - 2 * margin):
            line = ""
            while True:
                word = (
                    rng.choice(WORDS) if script == "latin" and rng.random() > 0.15
                    else str(rng.randint(1, 9999)) if script == "latin"
                    else "".join(rng.choice(HANZI) for _ in range(rng.randint(2, 5)))
                )
                candidate = f"{line} {word}".strip() if script == "latin" else line + word + ("，" if rng.random() < 0.1 else "")
                if draw.textlength(candidate, font=font) > column:
                    break
                line = candidate
            draw.text((left, y), line, font=font, fill="black")
            lines.append(line)
            y += step
    # The reader's order: rows top to bottom, pieces of a row left to right. The columns' lines
    # share their rows, so a row holds the left column's line and then the right one's: the
    # bench measures reading, not layout analysis.
    rows = [" ".join(pair) for pair in zip(*columns)]
    return Page(image, "\n".join(rows), script, font_px)


def score(reading: str, reference: str) -> tuple[int, float]:
    """(characters of ``reference`` recovered in order, similarity error), whitespace ignored."""
    a, b = "".join(reference.split()), "".join(reading.split())
    # CJK commas read as ASCII ones are the same character for a reader
    b = b.replace(",", "，") if "，" in a else b
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    recovered = sum(block.size for block in matcher.get_matching_blocks())
    return recovered, round(1 - matcher.ratio(), 3)


def as_written(engine: Any, image: Image.Image) -> str:
    """The engine's own call, defaults and all (its angle classifier included), in our reading order."""
    found, _ = engine(image)
    pieces = [(bounds(tuple(tuple(p) for p in quad)), " ".join(str(text).split())) for quad, text, _ in found or []]
    return assemble(pieces, image.size)[0]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr_tiles", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT pages, by spaces or commas")
    parser.add_argument("--fonts", nargs="+", type=int, default=list(DEFAULT_FONTS), help="text heights in pixels")
    parser.add_argument("--scripts", nargs="+", choices=tuple(FONTS), default=list(FONTS))
    parser.add_argument("--tiles", default="auto", help="the tiled run's choice: auto or tiles across (default auto)")
    parser.add_argument(
        "--fill", type=float, default=1.0,
        help="share of the page's height filled with text (default 1); less reads faster, the page is shrunk the same",
    )
    parser.add_argument("--markdown", default=None, help="also write the table as Markdown here")
    parser.add_argument("--save-pages", default=None, help="write each generated page as PNG into this folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from tools.reading.tiling import parse_tiles

    args = parse(argv)
    args.sizes = [size for text in args.sizes for size in text.split(",") if size.strip()]
    for size in args.sizes:
        if not re.fullmatch(r"\s*\d+\s*[xX]\s*\d+\s*", size):
            print(f"--sizes: {size!r} is not WIDTHxHEIGHT, e.g. 4000x3000", file=sys.stderr)
            return 2
    if not RapidOcr.available():
        print("rapidocr-onnxruntime is not installed: pip install 'vlm-agent[ocr]'", file=sys.stderr)
        return 1
    tiles = parse_tiles(args.tiles)
    reader = rapidocr()
    reader.read(Image.new("RGB", (64, 32), "white"))  # load the models outside the timings
    from rapidocr_onnxruntime import RapidOCR

    baseline = RapidOCR()  # an engine of its own: the reader's is tuned
    header = (
        "| script | page | text px | characters | as written: recovered | error | s "
        "| whole: recovered | error | s | tiled: recovered | error | s | tiles |"
    )
    rows = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print(header, flush=True)
    for script in args.scripts:
        if font_path(script) is None:
            print(f"skipping {script}: no font found; install {INSTALL_HINT[script]} (tried {', '.join(FONTS[script])})",
                  file=sys.stderr)
            continue
        for size_text in args.sizes:
            width, height = (int(v) for v in size_text.lower().split("x"))
            for font_px in args.fonts:
                page = make_page((width, height), font_px, script, fill=args.fill)
                assert page is not None
                if args.save_pages:
                    Path(args.save_pages).mkdir(parents=True, exist_ok=True)
                    page.image.save(Path(args.save_pages) / f"{script}-{size_text}-{font_px}.png")
                total = len("".join(page.text.split()))
                cells = []
                for read in (lambda: as_written(baseline, page.image), lambda: reader.read(page.image).text,
                             lambda: rapidocr_tiled(reader, page.image, tiles)):
                    started = time.perf_counter()
                    reading = read()
                    seconds = time.perf_counter() - started
                    text = reading if isinstance(reading, str) else reading.text
                    recovered, error = score(text, page.text)
                    cells.append(f"{recovered} ({100 * recovered / total:.1f}%) | {error:.3f} | {seconds:.1f}")
                row = (
                    f"| {script} | {width}x{height} | {font_px} | {total} | {' | '.join(cells)} "
                    f"| {len(reading.tiles)} |"
                )
                rows.append(row)
                print(row, flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

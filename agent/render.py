"""Terminal rendering for the chat client: image previews, result tables and status lines.

Everything here takes plain result dicts (the JSON of ``tools.results``) and PIL
images, so the chat can render what an MCP server sent without knowing MCP.

Three ways to show an image: the kitty graphics protocol (kitty, Ghostty,
WezTerm), DEC sixel (foot, mlterm, contour, xterm built with sixel), and, on
every other colour terminal, half blocks: "▀" cells whose foreground is the
upper pixel and background the lower one, two square-ish pixels per cell.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
from PIL import Image
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from .terminal import clean

Protocol = Literal["kitty", "sixel", "blocks", "none"]
PROTOCOLS: tuple[Protocol, ...] = ("kitty", "sixel", "blocks", "none")
PROTOCOL_ENV = "VLM_AGENT_IMAGES"

UPPER_HALF = "▀"
ESC = "\x1b"
ST = ESC + "\\"
#: The kitty protocol caps each escape's payload at 4096 base64 characters.
KITTY_CHUNK = 4096
#: Pixel bounds of kitty and sixel previews: a thumbnail of about a dozen text rows.
PREVIEW_PIXELS = (400, 216)
#: Column bound of half-block previews, when the console is wider.
PREVIEW_COLUMNS = 60
#: Row bound of half-block previews: the answer above stays on screen.
PREVIEW_ROWS = 12

KITTY_PROGRAMS = {"ghostty", "WezTerm"}
SIXEL_TERMINALS = {"foot", "mlterm", "contour"}

RGB = tuple[int, int, int]


def _rgb(image: Image.Image) -> Image.Image:
    """The image as RGB, transparent parts on black.

    A plain ``convert("RGB")`` would show whatever colour hides under fully
    transparent pixels, often garbage.
    """
    if image.mode == "RGB":
        return image
    if not image.has_transparency_data:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Shrink to fit ``width`` x ``height`` with the aspect ratio kept; never enlarge."""
    scale = min(width / image.width, height / image.height, 1.0)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    # reducing_gap: a cheap integer reduce first, so a 12-megapixel photo shrinks fast.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


# ---------------------------------------------------------------- half blocks


def half_blocks(image: Image.Image, max_width: int = 60, max_height: int = 24) -> Text:
    """A true-colour thumbnail of at most ``max_width`` columns by ``max_height`` rows.

    Each row holds two pixel rows, so the image is fitted to ``max_width`` x
    ``2 * max_height`` pixels. Cells of the same colours are merged into one
    span, which keeps a flat background cheap to render.
    """
    pixels = np.asarray(_fit(_rgb(image), max(1, max_width), 2 * max(1, max_height)))
    height, width = pixels.shape[:2]
    text = Text(no_wrap=True, overflow="crop")
    styles: dict[tuple[RGB, RGB | None], Style] = {}

    def style(top: RGB, bottom: RGB | None) -> Style:
        key = (top, bottom)
        if key not in styles:
            styles[key] = Style(
                color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom) if bottom is not None else None
            )
        return styles[key]

    for y in range(0, height, 2):
        if y:
            text.append("\n")
        tops = [tuple(p) for p in pixels[y].tolist()]
        # An odd last row has no lower pixel: leave the terminal's background there.
        bottoms = [tuple(p) for p in pixels[y + 1].tolist()] if y + 1 < height else [None] * width
        run = 0
        for x in range(width):
            run += 1
            if x + 1 == width or (tops[x + 1], bottoms[x + 1]) != (tops[x], bottoms[x]):
                text.append(UPPER_HALF * run, style(tops[x], bottoms[x]))
                run = 0
    return text


# ---------------------------------------------------------------- kitty


def kitty_escape(png: bytes) -> str:
    """The kitty graphics protocol escapes that transmit and display ``png``.

    ``q=2`` keeps the terminal from answering: a reply would land in the chat's
    input line as if typed.
    """
    data = base64.standard_b64encode(png).decode("ascii")
    chunks = [data[i : i + KITTY_CHUNK] for i in range(0, len(data), KITTY_CHUNK)] or [""]
    escapes = []
    for i, chunk in enumerate(chunks):
        keys = "a=T,f=100,q=2," if i == 0 else ""
        more = int(i + 1 < len(chunks))
        escapes.append(f"{ESC}_G{keys}m={more};{chunk}{ST}")
    return "".join(escapes)


# ---------------------------------------------------------------- sixel


def sixel(image: Image.Image, max_width: int = 480) -> str:
    """A DEC sixel picture of ``image``, at most ``max_width`` pixels wide and 256 colours."""
    rgb = _rgb(image)
    if rgb.width > max_width:
        rgb = _fit(rgb, max_width, rgb.height)
    # No dithering: at 256 colours it adds little to a thumbnail and breaks the
    # long runs that run-length coding shrinks.
    quantized = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    indices = np.asarray(quantized, dtype=np.int16)
    palette = np.array(quantized.getpalette() or [], dtype=np.int32).reshape(-1, 3)
    width, height = rgb.size

    used = np.unique(indices)
    percent = (palette[used] * 100 + 127) // 255
    registers = "".join(f"#{n};2;{r};{g};{b}" for n, (r, g, b) in zip(used.tolist(), percent.tolist()))

    # Pad to whole bands with -1, a colour no pixel has.
    bands = -(-height // 6)
    padded = np.full((bands * 6, width), -1, dtype=np.int16)
    padded[:height] = indices
    body = "-".join(_sixel_band(padded[i * 6 : i * 6 + 6]) for i in range(bands))
    return f'{ESC}Pq"1;1;{width};{height}{registers}{body}{ST}'


def _sixel_band(rows: np.ndarray) -> str:
    """One band of six pixel rows: a run-length coded line per colour, joined by ``$``."""
    width = rows.shape[1]
    colors, inverse = np.unique(rows, return_inverse=True)
    inverse = inverse.reshape(rows.shape)
    # bits[k, x]: which of the six rows have colour k in column x, top row lowest.
    bits = np.zeros((len(colors), width), dtype=np.uint8)
    columns = np.arange(width)
    for r in range(6):
        bits[inverse[r], columns] |= np.uint8(1 << r)
    if colors[0] < 0:
        colors, bits = colors[1:], bits[1:]

    # Runs of equal sixels over the whole band at once, never across colour lines.
    flat = bits.ravel()
    starts_mask = np.ones(flat.size, dtype=bool)
    starts_mask[1:] = flat[1:] != flat[:-1]
    starts_mask[::width] = True
    starts = np.flatnonzero(starts_mask)
    lengths = np.diff(np.append(starts, flat.size))
    values = flat[starts]
    line_of = starts // width
    # A line's trailing empty sixels draw nothing, so they are left out.
    last_in_line = np.append(line_of[1:] != line_of[:-1], True)
    keep = ~(last_in_line & (values == 0))
    starts, lengths, values, line_of = starts[keep], lengths[keep], values[keep], line_of[keep]

    pieces = [
        chr(63 + v) * n if n < 4 else f"!{n}{chr(63 + v)}" for v, n in zip(values.tolist(), lengths.tolist())
    ]
    bounds = np.searchsorted(line_of, np.arange(len(colors) + 1)).tolist()
    return "$".join(
        f"#{color}" + "".join(pieces[bounds[k] : bounds[k + 1]]) for k, color in enumerate(colors.tolist())
    )


# ---------------------------------------------------------------- choosing and showing


def image_protocol(env: Mapping[str, str], is_terminal: bool) -> Protocol:
    """How this terminal can show images, from its environment.

    ``$VLM_AGENT_IMAGES`` (kitty, sixel, blocks or none) overrides the guess.
    The guess is conservative: a terminal named here is known to support the
    protocol; anything else gets half blocks, which every colour terminal shows
    (rich maps true colour down to 256 or 16 colours where needed).
    """
    forced = env.get(PROTOCOL_ENV, "").strip().lower()
    if forced in PROTOCOLS:
        return cast(Protocol, forced)
    term = env.get("TERM", "")
    program = env.get("TERM_PROGRAM", "")
    if not is_terminal or term == "dumb":
        return "none"
    # tmux and screen swallow graphics escapes unless passthrough is set up,
    # while still inheriting KITTY_WINDOW_ID from the outer terminal.
    if env.get("TMUX") or env.get("STY") or term.startswith(("tmux", "screen")):
        return "blocks"
    if env.get("KITTY_WINDOW_ID") or term in ("xterm-kitty", "xterm-ghostty") or program in KITTY_PROGRAMS:
        return "kitty"
    if "sixel" in term or program in SIXEL_TERMINALS or term.split("-")[0] in SIXEL_TERMINALS:
        return "sixel"
    return "blocks"


def preview(console: Console, image: Image.Image, protocol: str) -> None:
    """Print a thumbnail of ``image`` on ``console`` with ``protocol``."""
    if protocol == "none":
        return
    if protocol == "blocks":
        rows = max(4, min(PREVIEW_ROWS, console.height // 3))
        console.print(half_blocks(image, max_width=min(PREVIEW_COLUMNS, console.width), max_height=rows))
        return
    thumbnail = _fit(_rgb(image), *PREVIEW_PIXELS)
    if protocol == "kitty":
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="PNG")
        escape = kitty_escape(buffer.getvalue())
    elif protocol == "sixel":
        escape = sixel(thumbnail, max_width=PREVIEW_PIXELS[0])
    else:
        raise ValueError(f"Unknown image protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}.")
    # Past rich: it would count the escape's characters as printed width.
    console.file.write(escape + "\n")
    console.file.flush()


# ---------------------------------------------------------------- results


def _size(size: Sequence[int]) -> str:
    width, height = size
    return f"{width}×{height}"


def detections_table(result: Mapping[str, Any]) -> Table:
    """The boxes of a detect or segment result, in pixels of the original image."""
    detections = result.get("detections") or []
    where = f" in {_size(result['image_size'])}" if result.get("image_size") else ""
    count = len(detections)
    title = f"{count} detection{'s' if count != 1 else ''}{where}" if count else "no detections"
    table = Table(title=Text(clean(title), style="table.title"))
    table.add_column("#", justify="right", style="dim")
    table.add_column("label")
    for name in ("x1", "y1", "x2", "y2"):
        table.add_column(name, justify="right")
    # Columns for what tiles, consensus and verify add, only when some box has it.
    columns = (
        ("found at budgets", "agreement", lambda a: f"{', '.join(map(str, a['budgets']))} ({a['score']:.2f})"),
        ("verified", "verified", lambda v: "yes" if v else "no"),
        ("tiles", "tiles", lambda t: ", ".join(map(str, t))),
    )
    extras = [column for column in columns if any(d.get(column[1]) is not None for d in detections)]
    for name, _, _ in extras:
        table.add_column(name)
    for i, d in enumerate(detections, 1):
        cells = ["-" if d.get(key) is None else show(d[key]) for _, key, show in extras]
        # Text, not markup: labels and values are the server's (or the model's)
        table.add_row(*(Text(clean(cell)) for cell in (i, d["label"], *d["box"], *cells)))
    return table


def extract_table(result: Mapping[str, Any]) -> Table:
    """An extraction's values, one row each: where it was read, how sure, and what a second look said."""
    fields = result.get("fields") or []
    valid = "valid" if result.get("valid") else "not valid"
    title = f"{len(fields)} value{'s' if len(fields) != 1 else ''} ({valid} for the schema)"
    table = Table(title=Text(clean(title), style="table.title"))
    table.add_column("field")
    table.add_column("value")
    table.add_column("confidence", justify="right")
    table.add_column("box")
    table.add_column("verified")
    several = len(result.get("image_sizes") or []) > 1
    for f in fields:
        confidence = "-" if f.get("confidence") is None else f"{f['confidence']:.2f}"
        box = "-" if f.get("box") is None else " ".join(map(str, f["box"]))
        if several and f.get("box") is not None:
            box += f" (image {f['image'] + 1})"
        verified = f.get("verified") or "-"
        if verified == "changed":
            verified += f" (was {json.dumps(f.get('first_value'), ensure_ascii=False)})"
        elif f.get("verified") is not None and f.get("reread") is not None and verified != "agree":
            verified += f" (re-read {json.dumps(f.get('reread'), ensure_ascii=False)})"
        value = json.dumps(f.get("value"), ensure_ascii=False)
        # Text, not markup: values are the model's
        table.add_row(*(Text(clean(cell)) for cell in (f["path"].lstrip("/") or "/", value, confidence, box, verified)))
    return table


def budgets_table(result: Mapping[str, Any]) -> Table:
    """A budget comparison, one row per budget, the recommended one ticked and bold."""
    runs = result.get("runs") or []
    recommended = result.get("recommended_budget")
    reference = result.get("reference_budget") or max((run["budget"] for run in runs), default=None)
    table = Table(
        title="visual-token budgets",
        caption=Text(clean(
            f"agreement = {result.get('metric', '?')} vs {reference}; "
            f"recommended: {recommended} (≥ {result.get('threshold', 0):.2f})"
        ), style="table.caption"),
    )
    table.add_column("", width=1)
    for name in ("budget", "image tokens", "seen", "encode ms", "prefill ms", "decode ms", "total ms",
                 "tokens generated", "agreement"):
        table.add_column(name, justify="right")
    shared = False
    for run in runs:
        chosen = run["budget"] == recommended
        tokens = run.get("image_tokens")
        timings = run.get("timings") or {}
        shared = shared or timings.get("decode_ms") is not None
        cells = (
            "✓" if chosen else "",
            str(run["budget"]),
            "?" if tokens is None else str(tokens),
            _size(run["seen_size"]) if run.get("seen_size") else "?",
            *(_ms(timings.get(name)) for name in ("preprocess_ms", "prefill_ms", "decode_ms", "total_ms")),
            str(run["generated_tokens"]),
            f"{run['agreement']:.2f}",
        )
        # Text, not markup: the values are the server's
        table.add_row(*(Text(clean(cell)) for cell in cells), style="bold" if chosen else None)
    if shared:
        # the same decode figure on every row is one batch, not five
        table.caption = Text(f"{table.caption}; decode ms: one batch shared by every budget", style="table.caption")
    return table


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def stats_line(result: Mapping[str, Any]) -> str:
    """One line of what a call cost, for printing dim under its answer."""
    if result.get("engine") == "rapidocr":
        # no model ran: no tokens to count
        count = len(result.get("lines") or [])
        return f"rapidocr · {count} line{'' if count == 1 else 's'} of text · {result['timings']['total_ms'] / 1000:.2f} s"
    parts = [result["family"]]
    if result.get("budget") is not None:
        parts.append(f"budget {result['budget']}")
    tokens = result.get("image_tokens")
    parts.append("image tokens unknown" if tokens is None else f"{tokens} image tokens")
    parts.append(f"{result['prompt_tokens']} prompt + {result['generated_tokens']} generated tokens")
    parts.append(f"{result['timings']['total_ms'] / 1000:.2f} s")
    if result.get("finish_reason") == "length":
        parts.append("cut at the token limit")
    return " · ".join(parts)


def status_line(
    model: str,
    family: str,
    policy: str,
    text_tokens: int,
    image_tokens: int,
    window: int | None,
    dropped: int,
) -> Text:
    """The chat's status bar: model, the family's context policy and how full the context is (of its limit)."""
    context = f"context: {text_tokens:,} text + {image_tokens:,} image tokens"
    if window:
        used = text_tokens + image_tokens
        context += f" / {window:,} ({round(100 * used / window)}%)"
    line = Text.assemble((clean(model), "bold"), clean(f" · {family} · {policy} · {context}"))
    if dropped > 0:
        line.append(" · ")
        line.append(f"{dropped} older turn{'s' if dropped != 1 else ''} dropped", style="bold yellow")
    return line

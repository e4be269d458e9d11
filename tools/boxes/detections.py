"""The one detection type, and the machinery every family's box reader shares.

A family's module says how its models write boxes (``tools.families``): Gemma 4 and Qwen3-VL
write JSON items whose box sits under one key, in an order, on a grid (``from_json_boxes``
reads them all); PaliGemma writes location tokens and reads them with ``Collector`` itself.

Model output is untrusted text, so the readers never raise on it: they keep every
item they can read and give, in ``dropped``, one reason for each item (or part of
an item) they left out. Decisions shared by every reader:

- a missing or empty label becomes ``"object"``: the box is the useful part, and
  ``raw`` still shows what the model wrote;
- swapped corners are put in order and values outside the grid are clamped to it,
  silently, because the box is kept and means the same thing;
- a box with no area after clamping, and an exact repeat (same label, same box
  after ordering and clamping) of an earlier item, are dropped with a reason.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from ..errors import InvalidRequest
from ..inputs.origin import Origin

DEFAULT_LABEL = "object"
#: which coordinate a family writes first: y (y1, x1, y2, x2) or x (x1, y1, x2, y2)
BoxOrder = Literal["yx", "xy"]

_TRAILING_COMMA = re.compile(r",\s*([}\]])")


@dataclass(frozen=True)
class Agreement:
    """How far the budgets of a consensus detection agree on one fused box."""

    budgets: Annotated[tuple[int, ...], Field(description="the budgets whose boxes were fused into this one")]
    ious: Annotated[
        tuple[float, ...], Field(description="each of those boxes' IoU with the fused box, in the same order")
    ]
    score: Annotated[float, Field(description="the share of the budgets that found it, 0..1")]


@dataclass(frozen=True)
class Detection:
    """One labelled box: what the parsers return, drawing draws, scoring matches and results carry."""

    label: str
    box: Annotated[
        tuple[int, int, int, int],
        Field(description="[x1, y1, x2, y2] in pixels of the original image, origin top left"),
    ]
    box_normalized: Annotated[
        tuple[float, float, float, float], Field(description="the same box as fractions of width and height")
    ]
    raw: Annotated[str, Field(description="the model text this box came from")]
    seg_codes: Annotated[
        tuple[int, ...], Field(description="PaliGemma's 16 mask codes, when the model gave them (segment)")
    ] = ()
    tiles: Annotated[
        tuple[int, ...] | None,
        Field(description="the tiles (TileOut.index) this box was found in, when the image was read in tiles"),
    ] = None
    agreement: Annotated[
        Agreement | None, Field(description="which budgets found this box, when detect ran with consensus")
    ] = None
    verified: Annotated[
        bool | None,
        Field(
            description="with verify: whether the model, shown this box's crop, said it is the label; "
            "null when it was not asked or its answer was neither yes nor no"
        ),
    ] = None
    origin: Annotated[
        Origin | None,
        Field(description="the PDF page or clip frame this box is on, its pixels that page's or frame's"),
    ] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "box": list(self.box),
            "box_normalized": list(self.box_normalized),
            "raw": self.raw,
            "seg_codes": list(self.seg_codes),
        }


@dataclass
class ParsedDetections:
    detections: list[Detection]
    #: one short reason per item left out, e.g. "item 3: box has 3 numbers, need 4"
    dropped: list[str]
    #: (width, height) the boxes were scaled to
    image_size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "detections": [d.to_dict() for d in self.detections],
            "dropped": list(self.dropped),
            "image_size": list(self.image_size),
        }


class Drop(Exception):
    """An item is left out; the message is the reason."""


class Collector:
    """Turns grid-unit boxes into Detections, and keeps the account of what was dropped."""

    def __init__(self, image_size: tuple[int, int], grid: int) -> None:
        if not (isinstance(grid, int) and grid > 0):
            raise InvalidRequest(f"The grid must be a positive whole number, not {grid!r}.")
        if not (len(image_size) == 2 and all(isinstance(v, int) and v > 0 for v in image_size)):
            raise InvalidRequest(f"The image size must be two positive whole numbers, not {image_size!r}.")
        self.image_size = (image_size[0], image_size[1])
        self.grid = grid
        self.detections: list[Detection] = []
        self.dropped: list[str] = []
        self._first_seen: dict[tuple[str, tuple[float, ...]], int] = {}

    def drop(self, number: int, reason: str) -> None:
        self.dropped.append(f"item {number}: {reason}")

    def add(
        self, number: int, label: str, yxyx: Sequence[float], raw: str, seg_codes: tuple[int, ...] = ()
    ) -> None:
        """Add one item given as y1, x1, y2, x2 in grid units; raises Drop to leave it out."""
        y1, x1, y2, x2 = (min(max(v, 0.0), float(self.grid)) for v in yxyx)
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if x1 == x2 or y1 == y2:
            raise Drop(f"zero-area box (after clamping to 0..{self.grid})")
        key = (label, (x1, y1, x2, y2))
        if key in self._first_seen:
            raise Drop(f"duplicate of item {self._first_seen[key]}")
        self._first_seen[key] = number
        width, height = self.image_size
        self.detections.append(
            Detection(
                label=label,
                box=(self._pixel(x1, width), self._pixel(y1, height), self._pixel(x2, width), self._pixel(y2, height)),
                box_normalized=(
                    round(x1 / self.grid, 4),
                    round(y1 / self.grid, 4),
                    round(x2 / self.grid, 4),
                    round(y2 / self.grid, 4),
                ),
                raw=raw,
                seg_codes=seg_codes,
            )
        )

    def _pixel(self, value: float, side: int) -> int:
        # multiply before dividing so that whole grid values scale exactly, and round
        # halves up (Python's round() goes to even, which would shift some edges)
        return min(side, math.floor(value * side / self.grid + 0.5))

    def result(self) -> ParsedDetections:
        return ParsedDetections(self.detections, self.dropped, self.image_size)


def label_of(value: Any) -> str:
    text = " ".join(str(value).split()) if isinstance(value, (str, int, float)) else ""
    return text or DEFAULT_LABEL


def from_pixel_box(label: str, box: Sequence[float], image_size: tuple[int, int], raw: str) -> Detection:
    """A detection from a box already in pixels (x1, y1, x2, y2): ordered, clamped to the image, rounded."""
    width, height = image_size
    xs = sorted(min(max(float(v), 0.0), float(width)) for v in (box[0], box[2]))
    ys = sorted(min(max(float(v), 0.0), float(height)) for v in (box[1], box[3]))
    x1, x2 = (math.floor(v + 0.5) for v in xs)
    y1, y2 = (math.floor(v + 0.5) for v in ys)
    normalized = (round(x1 / width, 4), round(y1 / height, 4), round(x2 / width, 4), round(y2 / height, 4))
    return Detection(label=label, box=(x1, y1, x2, y2), box_normalized=normalized, raw=raw)


# ---------------------------------------------------------------- JSON items


def box_items_schema(key: str, grid: int, labels: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON schema for what ``from_json_boxes`` reads: a list of ``{KEY: [four whole numbers on
    0..grid], "label": ...}`` items, ``labels`` the only labels allowed (any text without them).

    An engine with structured outputs is asked to answer detect requests under it, so every
    answer parses: no fence, no prose, no box with three numbers. The key comes first, as the
    families write it, and nothing else may be added to an item.
    """
    label: dict[str, Any] = {"type": "string", "enum": list(dict.fromkeys(labels))} if labels else {"type": "string"}
    numbers = {"type": "integer", "minimum": 0, "maximum": grid}
    return {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {key: {"type": "array", "items": numbers, "minItems": 4, "maxItems": 4}, "label": label},
            "required": [key, "label"],
            "additionalProperties": False,
        },
    }



def from_json_boxes(
    text: str, image_size: tuple[int, int], *, key: str, order: BoxOrder, grid: int
) -> ParsedDetections:
    """Detections from JSON items ``{KEY: [four numbers], "label": ...}`` on ``grid``, ``order`` first.

    Every JSON object in the text is read, wherever it is: inside or outside code
    fences, in every fenced block, in a list, alone, or wrapped in another object.
    So prose, fences and stray brackets need no special case, and a model that
    repeats its block gets its repeats dropped as duplicates. An object left open
    at the end (truncated output) is reported, and the complete ones before it kept.
    An item under another family's key is dropped with its reason, never read in the
    wrong order.
    """
    out = Collector(image_size, grid)
    found, truncated = json_items(text, key)
    for number, (raw, item) in enumerate(found, start=1):
        try:
            a, b, c, d = box_numbers(item, key)
            out.add(number, label_of(item.get("label")), (a, b, c, d) if order == "yx" else (b, a, d, c), raw)
        except Drop as reason:
            out.drop(number, str(reason))
    if truncated:
        out.dropped.append("truncated output: 1 incomplete item ignored")
    return out.result()


def json_items(text: str, key: str) -> tuple[list[tuple[str, Any]], bool]:
    """(raw text, decoded object or None) per item, and whether the text ends inside an item.

    An item is an object holding ``key``, or an innermost object (holding no
    other object), which is reported as dropped when it has no box. Any other
    object is a wrapper, and the scan goes on inside it.
    """
    items: list[tuple[str, Any]] = []
    ends: dict[int, int | None] = {}
    start = text.find("{")
    while start != -1:
        end = _closing_brace(text, start, ends)
        if end is None:
            # an open wrapper may still hold complete items; an open innermost object is the cut-off one
            start = text.find("{", start + 1)
            if start == -1:
                return items, True
            continue
        chunk = text[start:end]
        innermost = "{" not in chunk[1:]
        # Decoding every wrapper of deeply nested output would be quadratic; one without the
        # word cannot hold a box itself.
        decoded = _loads(chunk) if innermost or key in chunk else None
        if innermost or (isinstance(decoded, dict) and key in decoded):
            items.append((chunk, decoded))
            start = text.find("{", end)
        else:
            start = text.find("{", start + 1)
    return items, False


def _closing_brace(text: str, start: int, ends: dict[int, int | None]) -> int | None:
    """Index just past the brace closing the one at ``start``; None when the text ends first.

    ``ends`` remembers, by start index, the end of every object a scan went through, and a
    later scan skips those. Without it, output of thousands of nested or unclosed braces
    costs a full rescan per brace, quadratic time while the model is held. A nested object
    that never closes means that none around it closes either.
    """
    if start in ends:
        return ends[start]
    opened: list[int] = []
    in_string = escaped = False
    i = start
    while i < len(text):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            if opened and i in ends:
                end = ends[i]
                if end is None:
                    break
                i = end
                continue
            opened.append(i)
        elif char == "}":
            ends[opened.pop()] = i + 1
            if not opened:
                return i + 1
        i += 1
    for index in opened:
        ends[index] = None
    return None


def _loads(chunk: str) -> Any:
    # RecursionError: nesting deeper than the decoder's stack, which no box item needs
    try:
        return json.loads(chunk)
    except (ValueError, RecursionError):
        pass
    # language models often leave a comma before a closing bracket
    try:
        return json.loads(_TRAILING_COMMA.sub(r"\1", chunk))
    except (ValueError, RecursionError):
        return None


def box_numbers(item: Any, key: str) -> list[float]:
    """The four numbers under ``key`` of a decoded item; raises Drop with the reason it has none."""
    if item is None:
        raise Drop("not valid JSON")
    if not isinstance(item, dict) or key not in item:
        raise Drop(f"no {key}")
    box = item[key]
    if not isinstance(box, list):
        raise Drop(f"{key} is not a list")
    if len(box) != 4:
        raise Drop(f"box has {len(box)} numbers, need 4")
    return [number_of(value) for value in box]


def number_of(value: Any) -> float:
    number = math.nan
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
    except (ValueError, OverflowError):
        pass  # OverflowError: an integer of hundreds of digits, as far off any grid as Infinity
    # json.loads accepts NaN and Infinity, which have no place on a grid
    if not math.isfinite(number):
        shown = repr(value)
        raise Drop(f"box has a non-numeric value {shown if len(shown) <= 40 else shown[:39] + '…'}")
    return number


# ---------------------------------------------------------------- comparing results


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes; 0.0 when both are empty."""
    overlap_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    overlap_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = overlap_w * overlap_h
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def match_f1(pred: Sequence[Detection], ref: Sequence[Detection], iou_threshold: float = 0.5) -> float:
    """F1 of ``pred`` against ``ref``: greedy one-to-one matching, best IoU first.

    A pair matches when the labels agree (ignoring case) and the IoU is at least
    ``iou_threshold``. Boxes are compared as fractions of the image, so results
    parsed against different image sizes still compare. Both empty gives 1.0.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise InvalidRequest(f"iou_threshold must be between 0 and 1, not {iou_threshold}.")
    if not pred and not ref:
        return 1.0
    pairs = sorted(
        (-iou(p.box_normalized, r.box_normalized), i, j)
        for i, p in enumerate(pred)
        for j, r in enumerate(ref)
        if p.label.casefold() == r.label.casefold()
    )
    used_pred: set[int] = set()
    used_ref: set[int] = set()
    for negative_iou, i, j in pairs:
        if -negative_iou < iou_threshold:
            break
        if i not in used_pred and j not in used_ref:
            used_pred.add(i)
            used_ref.add(j)
    return 2 * len(used_pred) / (len(pred) + len(ref))

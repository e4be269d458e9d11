"""Qwen3-VL (``qwen3_vl``): its chat template, pixel-range budgets, ``bbox_2d`` detections.

Budgets. Qwen3-VL sees an image at its own resolution, resized by the image processor's
``smart_resize`` to a multiple of 32 px per side (16 px patches, merged 2 x 2 into one image
token) with the pixel count kept between ``size.shortest_edge`` and ``size.longest_edge``
(``min_pixels`` / ``max_pixels`` in Qwen's own docs). A budget of N image tokens is
``longest_edge = N * 32 * 32``: a bigger image is scaled down to at most N tokens, a smaller
one keeps its resolution (the checkpoint's floor, 64 tokens, still scales tiny images up), so
for a small picture the higher budgets give the same count. Where scaling up to the floor would
round past the budget, the floor is lowered for that call. Only an image too long and thin for
one row of tokens within the budget passes it, and the result's notes say so.

Boxes. Qwen3-VL answers grounding requests with JSON items
``{"bbox_2d": [x1, y1, x2, y2], "label": ...}``: x first, on a 0..1000 grid relative to the
image (``x / 1000 * width``), whatever size the processor resized it to. Qwen2.5-VL wrote
absolute pixels of the *resized* input instead; that is not this family's format. Real outputs
stop at 999 (the provider's docs say 0..999, the cookbook says 0..1000): 1000 is read as the far
edge either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..boxes.detections import ParsedDetections, from_json_boxes
from ..errors import InvalidRequest
from ..tasks import Ask, Capabilities, Prompt, Turn, plural
from .base import BudgetedChatDialect, TokenCounter, chat_messages, describe_text, extract_text, video_messages

#: the same budgets as Gemma 4, so compare_budgets lines the two families up
QWEN3_VL_BUDGETS: tuple[int, ...] = (70, 140, 280, 560, 1120)
DEFAULT_BUDGET = 280
#: bbox_2d values are thousandths of the image's width and height
QWEN3_VL_GRID = 1000
BOX_KEY = "bbox_2d"
#: pixels per side of one image token: 16 px patches merged 2 x 2 (the real checkpoints' processor)
TOKEN_SIDE = 32
#: the image processor's limit on the ratio of an image's long side to its short side
MAX_ASPECT = 200
#: the real checkpoints' floor (``size.shortest_edge``, 65536 px): 64 image tokens
FLOOR_TOKENS = 64

OCR = "Read all the text in the image, in reading order. Keep the line breaks and output only the text."


def detect_text(labels: Sequence[str]) -> str:
    """The grounding request of Qwen3-VL's own cookbook (2d_grounding), for the given labels."""
    return (
        f'Locate every instance that belongs to the following categories: "{", ".join(labels)}". '
        "Report bbox coordinates in JSON format."
    )


# ---------------------------------------------------------------- budgets


def token_grid(size: tuple[int, int], min_pixels: int, max_pixels: int, side: int = TOKEN_SIDE) -> tuple[int, int]:
    """(columns, rows) of image tokens for an image of ``size``, as the image processor resizes it."""
    # smart_resize of the installed transformers, the function the processor runs
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    width, height = size
    h, w = smart_resize(height, width, factor=side, min_pixels=min_pixels, max_pixels=max_pixels)
    return w // side, h // side


def pixel_range(
    sizes: Sequence[tuple[int, int]], budget: int, side: int = TOKEN_SIDE, floor: int = FLOOR_TOKENS
) -> tuple[int, int]:
    """(min_pixels, max_pixels) that keep each image of ``sizes`` within ``budget`` image tokens.

    ``max_pixels`` is the budget's area. Scaling a small image up to the floor rounds both sides
    up, which can pass the budget (a 100 x 128 image becomes 8 x 10 tokens for a floor of 64), so
    the floor is lowered a token at a time until every image fits; scaling down only rounds down.
    """
    most = budget * side**2
    for tokens in range(min(floor, budget), 0, -1):
        least = tokens * side**2
        if all(math.prod(token_grid(size, least, most, side)) <= budget for size in sizes):
            return least, most
    return side**2, most


class Qwen3VL(BudgetedChatDialect):
    family = "qwen3_vl"
    display_name = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    # No "chat": Qwen3-VL's tool calls are <tool_call> JSON, which the chat's tool parser does not
    # read, so the chat client routes messages by keywords instead.
    tasks = frozenset({"describe", "ocr", "detect", "extract"})
    # Budgets reach an engine's processor as the same ``size`` argument as here.
    budget_values = QWEN3_VL_BUDGETS
    default_budget = DEFAULT_BUDGET
    box_grid = QWEN3_VL_GRID
    box_order = "xy"
    video = True
    box_key = BOX_KEY

    def __init__(self, capabilities: Capabilities, side: int = TOKEN_SIDE) -> None:
        super().__init__(capabilities)
        #: pixels per side of one image token (patch size x merge size), for sizes and counts
        self.side = side

    @classmethod
    def for_config(cls, config: Any) -> Qwen3VL:
        vision = getattr(config, "vision_config", None)
        patch = int(getattr(vision, "patch_size", TOKEN_SIDE // 2))
        merge = int(getattr(vision, "spatial_merge_size", 2))
        return cls(cls.from_config(config), patch * merge)

    def prompt(self, ask: Ask, count_tokens: TokenCounter | None = None) -> Prompt:
        if ask.video is not None:
            return self.video_prompt(ask)
        # Earlier turns go with describe, the conversational task; ocr and detect ask afresh.
        history, notes = user_images_only(ask.history if ask.task == "describe" else ())
        if ask.task == "detect":
            text = detect_text(ask.labels)
        elif ask.task == "ocr":
            text = OCR
        elif ask.task == "extract":
            text = extract_text(ask.prompt, len(ask.images))
        else:
            text = describe_text(ask.prompt, len(ask.images))
        images = [*(image for turn in history for image in turn.images), *ask.images]
        kwargs, too_thin = self.sized_kwargs([image.size for image in images], ask.budget)
        return Prompt(
            images=images,
            messages=chat_messages(ask.images, text, history),
            budget=ask.budget,
            processor_kwargs=kwargs,
            history_turns=len(history),
            notes=notes + too_thin,
            schema=ask.schema,
            answer_schema=self.answer_schema(ask),
        )

    def sized_kwargs(self, sizes: Sequence[tuple[int, int]], budget: int | None) -> tuple[dict[str, Any], list[str]]:
        """The image processor's ``size`` that keeps images of ``sizes`` within ``budget``, and a
        note for each image that cannot fit it (the processor keeps at least one token per side)."""
        for n, (width, height) in enumerate(sizes, start=1):
            # the image processor refuses these itself, with a traceback's worth of ValueError
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise InvalidRequest(
                    f"Image {n} is {width}x{height}; {self.display_name} takes images whose long side is at "
                    f"most {MAX_ASPECT} times the short one, so crop it.", param="images",
                )
        if budget is None:
            return {}, []
        least, most = pixel_range(sizes, budget, side=self.side)
        notes = []
        for n, (width, height) in enumerate(sizes, start=1):
            tokens = math.prod(token_grid((width, height), least, most, self.side))
            if tokens > budget:
                notes.append(
                    f"image {n} ({width}x{height}) is too long and thin for budget {budget}: "
                    f"it takes {tokens} image tokens"
                )
        return {"size": {"shortest_edge": least, "longest_edge": most}}, notes

    def processor_kwargs(self, budget: int | None) -> dict[str, Any]:
        return self.sized_kwargs((), budget)[0]

    def video_prompt(self, ask: Ask) -> Prompt:
        """A clip through Qwen3-VL's video path: frames in pairs (its temporal patch), each pair after its
        ``<x.x seconds>`` timestamp; a budget caps the image tokens of each pair."""
        assert ask.video is not None
        clip, notes = ask.video, []
        if len(clip.frames) == 1:
            # The processor refuses a one-frame clip (it merges frames in pairs): the frame goes twice.
            clip = replace(clip, frames=clip.frames * 2, indices=clip.indices * 2, times=clip.times * 2)
            notes.append("one frame left: sent twice, as Qwen3-VL's video path takes frames in pairs")
        history, left_out = user_images_only(ask.history)
        kwargs: dict[str, Any] = {}
        if ask.budget is not None:
            # The video processor's pixel range counts every frame: one pair's share is the budget.
            frames = len(clip.frames) + len(clip.frames) % 2
            least = min(FLOOR_TOKENS, ask.budget) * self.side**2 * frames
            kwargs = {"videos_kwargs": {"size": {"shortest_edge": least, "longest_edge": ask.budget * self.side**2 * frames}}}
        return Prompt(
            images=[image for turn in history for image in turn.images],
            messages=video_messages(clip, ask.prompt, history),
            budget=ask.budget,
            processor_kwargs=kwargs,
            history_turns=len(history),
            notes=left_out + notes,
            videos=[clip],
        )

    def parse_boxes(self, text: str, size: tuple[int, int]) -> ParsedDetections:
        return from_bbox_2d_json(text, size)

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        budget = self.capabilities.default_budget if budget is None else budget
        if budget is None:
            return size
        columns, rows = token_grid(size, *pixel_range([size], budget, side=self.side), self.side)
        return columns * self.side, rows * self.side


def user_images_only(history: Sequence[Turn]) -> tuple[list[Turn], list[str]]:
    """The turns with images on user turns only, and the note of any left out.

    Qwen3-VL's chat template writes an image placeholder for user content only; an image on an
    assistant turn would reach the processor with no place in the text.
    """
    kept = [turn if turn.role == "user" else replace(turn, images=()) for turn in history]
    left_out = sum(len(turn.images) for turn in history) - sum(len(turn.images) for turn in kept)
    if not left_out:
        return kept, []
    return kept, [
        f"{plural(left_out, 'image', 'images')} of earlier assistant turns not sent: "
        "Qwen3-VL takes images in user turns only"
    ]


# ---------------------------------------------------------------- boxes


def from_bbox_2d_json(text: str, image_size: tuple[int, int]) -> ParsedDetections:
    """Detections from Qwen3-VL's ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` items, x first.

    The JSON is found and checked the way Gemma 4's is (``detections.from_json_boxes``): every
    object anywhere in the text, fenced or not, truncated output reported, complete items kept.
    """
    return from_json_boxes(text, image_size, key=BOX_KEY, order="xy", grid=QWEN3_VL_GRID)

"""PaliGemma through its task prefixes: single-turn, fixed resolution, boxes as <loc> tokens."""

from __future__ import annotations

from typing import Any

from .. import prompts
from ..detections import PALIGEMMA_GRID, ParsedDetections, from_loc_tokens
from ..tasks import Ask, Capabilities, Prompt
from .base import Dialect, TokenCounter, prompt_images, single_turn_note

#: why a segmentation comes back as codes and a box, never as a mask
NO_MASK_DECODER = (
    "no mask: PaliGemma's 16 <seg> codes are in seg_codes; turning them into a mask needs its VQ-VAE "
    "decoder weights, which are not available here"
)
#: PaliGemma's processor writes this placeholder once per image and expands it itself
IMAGE_TOKEN = "<image>"


class PaliGemma(Dialect):
    family = "paligemma"
    display_name = "PaliGemma"
    model_types = ("paligemma",)
    tasks = frozenset({"describe", "ocr", "detect", "segment"})
    prompt_form = "text"

    #: language of captions and answers when the prompt names none ("caption es" names one)
    lang: str = prompts.DEFAULT_LANG

    @classmethod
    def from_config(cls, config: Any) -> Capabilities:
        vision = config.vision_config
        tokens = getattr(config.get_text_config(), "num_image_tokens", None) or (
            (vision.image_size // vision.patch_size) ** 2
        )
        return Capabilities(
            tasks=cls.tasks,
            context_policy="single-turn",
            image_tokens=int(tokens),
            context_tokens=getattr(config.get_text_config(), "max_position_embeddings", None),
            box_grid=PALIGEMMA_GRID,
            box_order="yx",
        )

    def prompt(self, ask: Ask, count_tokens: TokenCounter | None = None) -> Prompt:
        notes: list[str] = []
        images = list(ask.images)
        if ask.task == "ocr":
            task = prompts.PALIGEMMA_OCR
        elif ask.task == "detect":
            task = prompts.paligemma_detect(ask.labels)
        elif ask.task == "segment":
            task = prompts.paligemma_segment(ask.labels[0])
            notes.append(NO_MASK_DECODER)
        else:
            images, notes = prompt_images(self.display_name, ask.images, ask.history)
            notes[:0] = single_turn_note(self.display_name, ask.history)
            task = prompts.paligemma_describe(ask.prompt, self.lang)
        # One <image> placeholder per image; the processor expands each and adds <bos> and the "\n".
        return Prompt(images=images, text=IMAGE_TOKEN * len(images) + task, notes=notes)

    def parse_boxes(self, text: str, size: tuple[int, int]) -> ParsedDetections:
        return from_loc_tokens(text, size, grid=PALIGEMMA_GRID)

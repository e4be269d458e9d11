"""PaliGemma through its task prefixes: single-turn, fixed resolution, boxes as <loc> tokens."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from .. import prompts
from ..detections import PALIGEMMA_GRID, ParsedDetections, from_loc_tokens
from ..options import GenerationOptions
from .base import Generation, Turn
from .hf import HFBackend, plural

#: why a segmentation comes back as codes and a box, never as a mask
NO_MASK_DECODER = (
    "no mask: PaliGemma's 16 <seg> codes are in seg_codes; turning them into a mask needs its VQ-VAE "
    "decoder weights, which are not available here"
)


class PaliGemmaBackend(HFBackend):
    family = "paligemma"
    display_name = "PaliGemma"
    grid = PALIGEMMA_GRID

    #: language of captions and answers when the prompt names none ("caption es" names one)
    lang: str = prompts.DEFAULT_LANG

    @property
    def fixed_image_tokens(self) -> int:
        return int(self.processor.image_seq_length)

    def ask(
        self, images: Sequence[Image.Image], task: str, options: GenerationOptions, notes: Sequence[str] = ()
    ) -> Generation:
        # One <image> placeholder per image; the processor expands each and adds <bos> and the "\n".
        text = self.processor.image_token * len(images) + task
        return self.run_prompt(images, text, options, notes=notes)

    def describe(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> Generation:
        self.check_fixed_budget(budget)
        pictures, notes = self.prompt_images(images, history)
        if history:
            left_out = plural(len(history), "prior turn was", "prior turns were")
            notes.insert(0, f"PaliGemma is single-turn: {left_out} not sent")
        return self.ask(pictures, prompts.paligemma_describe(prompt, self.lang), options, notes)

    def ocr(self, image: Image.Image, budget: int | None, options: GenerationOptions) -> Generation:
        self.check_fixed_budget(budget)
        return self.ask([image], prompts.PALIGEMMA_OCR, options)

    def detect(
        self, image: Image.Image, labels: Sequence[str], budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        self.check_fixed_budget(budget)
        generation = self.ask([image], prompts.paligemma_detect(labels), options)
        return generation, from_loc_tokens(generation.text, image.size, grid=self.grid)

    def segment(
        self, image: Image.Image, label: str, budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        self.check_fixed_budget(budget)
        generation = self.ask([image], prompts.paligemma_segment(label), options, [NO_MASK_DECODER])
        return generation, from_loc_tokens(generation.text, image.size, grid=self.grid)

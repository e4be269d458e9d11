"""Gemma 4 through its own chat template, with per-call visual-token budgets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from .. import prompts
from ..budgets import DEFAULT_BUDGET, GEMMA4_BUDGETS, check_budget, gemma4_seen_size
from ..detections import GEMMA4_GRID, ParsedDetections, from_box_2d_json
from ..options import GenerationOptions
from ..toolcalls import ParsedReply, parse_reply
from .base import Generation, Stopwatch, Turn
from .hf import HFBackend


#: one image as a message content part
ImagePart = Callable[[Image.Image], dict[str, Any]]


def template_image(image: Image.Image) -> dict[str, Any]:
    """An image part for the processor's chat template, which takes the decoded image."""
    return {"type": "image", "image": image}


def user_content(images: Sequence[Image.Image], text: str, image_part: ImagePart = template_image) -> list[dict[str, Any]]:
    # Images before the text, as in the Gemma 4 guide's examples.
    parts: list[dict[str, Any]] = [image_part(image) for image in images]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def build_messages(
    images: Sequence[Image.Image], prompt: str, history: Sequence[Turn], image_part: ImagePart = template_image
) -> list[dict[str, Any]]:
    """Chat messages: prior turns in order (with their images), then this one. ``image_part``
    writes an image the way the receiver takes it (the local chat template, or an HTTP API)."""
    messages = [
        {"role": turn.role, "content": user_content(turn.images, turn.text, image_part)} for turn in history
    ]
    messages.append({"role": "user", "content": user_content(images, prompt, image_part)})
    return messages


class Gemma4Backend(HFBackend):
    family = "gemma4"
    display_name = "Gemma 4"
    budgets = GEMMA4_BUDGETS
    default_budget = DEFAULT_BUDGET
    grid = GEMMA4_GRID

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        """(width, height) the vision encoder sees an image of ``size`` at ``budget``."""
        ip = self.processor.image_processor
        budget = self.default_budget if budget is None else budget
        return gemma4_seen_size(size, budget, ip.patch_size, ip.pooling_kernel_size)

    def run(
        self,
        messages: list[dict[str, Any]],
        budget: int | None,
        options: GenerationOptions,
        history_turns: int = 0,
        tools: list[dict[str, Any]] | None = None,
    ) -> Generation:
        budget = check_budget(self.default_budget if budget is None else budget, self.budgets, self.display_name)
        watch = Stopwatch()
        inputs = self.processor.apply_chat_template(
            messages,
            tools=tools,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"max_soft_tokens": budget},
        )
        return self.generate(inputs, options, budget=budget, watch=watch, history_turns=history_turns)

    def describe(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> Generation:
        text = prompts.gemma4_describe(prompt, len(images))
        return self.run(build_messages(images, text, history), budget, options, len(history))

    def ocr(self, image: Image.Image, budget: int | None, options: GenerationOptions) -> Generation:
        return self.run(build_messages([image], prompts.GEMMA4_OCR, ()), budget, options)

    def detect(
        self, image: Image.Image, labels: Sequence[str], budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        generation = self.run(build_messages([image], prompts.gemma4_detect(labels), ()), budget, options)
        return generation, from_box_2d_json(generation.text, image.size, grid=self.grid)

    def chat(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        history: Sequence[Turn],
        budget: int | None,
        options: GenerationOptions,
    ) -> tuple[Generation, ParsedReply]:
        messages = [{"role": "system", "content": prompts.CHAT_SYSTEM}, *build_messages(images, prompt, history)]
        generation = self.run(messages, budget, options, len(history), tools=prompts.CHAT_TOOLS)
        known = {tool["function"]["name"] for tool in prompts.CHAT_TOOLS}
        return generation, parse_reply(generation.raw_text, known)

"""Gemma 4 through its own chat template, with per-call visual-token budgets.

No work is done twice. Each image is encoded once per budget (``tools.cache.VisionCache``) and
reaches the model as features (``mm_encoder_outputs``), so a prompt is built from text alone:
the template's image placeholders are expanded to as many soft tokens as the cached encoding
has, which is what the processor would do after preprocessing the pixels. A prompt that starts
like an earlier one, with the same images, resumes from that call's KV cache
(``tools.cache.PrefixCache``) and prefills only the rest. ``at_budgets`` runs one task at
several budgets: each prompt prefilled alone, then every budget decoded in one batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .. import prompts
from ..budgets import DEFAULT_BUDGET, GEMMA4_BUDGETS, check_budget, gemma4_seen_size
from ..cache import (
    DynamicPrefixCache,
    EncodedImage,
    ImageBlock,
    PrefixCache,
    StaticPrefixCache,
    VisionCache,
    image_blocks,
    image_key,
)
from ..detections import GEMMA4_GRID, ParsedDetections, from_box_2d_json
from ..errors import InvalidRequest
from ..options import GenerationOptions
from ..results import CacheReport
from ..toolcalls import ParsedReply, parse_reply
from .base import Generation, Progress, Stopwatch, Task, Turn
from .hf import HFBackend, cache_kwarg


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


def message_images(messages: Sequence[dict[str, Any]]) -> list[Image.Image]:
    """The images of chat messages, in the order the template places their placeholders."""
    return [
        part["image"]
        for message in messages
        if not isinstance(message["content"], str)
        for part in message["content"]
        if part.get("type") == "image"
    ]


def vision_report(images: int, encoded: int) -> str:
    if images == 0:
        return "none"
    return "hit" if encoded == 0 else "miss" if encoded == images else "partial"


@dataclass
class Prompt:
    """A prompt ready for ``generate``: one row of token tensors, and its images' blocks and features."""

    inputs: Any
    blocks: list[ImageBlock]
    features: list[Any]
    vision: str

    @property
    def ids(self) -> list[int]:
        return self.inputs["input_ids"][0].tolist()

    def features_from(self, position: int) -> list[Any]:
        """The features of the images at or after ``position``: those a resumed prefill still needs."""
        return [features for features, block in zip(self.features, self.blocks) if block.start >= position]


def image_inputs(features: Sequence[Any]) -> dict[str, Any]:
    """``generate`` keyword arguments that hand the model encoded images, one tensor per image in prompt order."""
    if not features:
        return {}
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=tuple(features))}}


def left_pad(rows: Sequence[Any], pad_id: int) -> Any:
    """One batch from single-row prompts, padded on the left so that every row ends where generation starts."""
    import torch
    from transformers import BatchFeature

    width = max(row["input_ids"].shape[1] for row in rows)
    fill = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": 0}
    return BatchFeature(
        {
            name: torch.cat(
                [torch.nn.functional.pad(row[name], (width - row[name].shape[1], 0), value=value) for row in rows]
            )
            for name, value in fill.items()
        }
    )


class Gemma4Backend(HFBackend):
    family = "gemma4"
    display_name = "Gemma 4"
    budgets = GEMMA4_BUDGETS
    default_budget = DEFAULT_BUDGET
    grid = GEMMA4_GRID
    compiles = True

    def __init__(self, model_id: str, model: Any, processor: Any) -> None:
        super().__init__(model_id, model, processor)
        self.vision_cache = VisionCache()
        self.prefix_cache: PrefixCache = DynamicPrefixCache()
        # Older transformers cannot take encoded images: they get the processor's own path, uncached.
        self.reuses_encodings = "mm_encoder_outputs" in inspect.signature(model.forward).parameters

    def enable_compile(self) -> None:
        super().enable_compile()
        self.prefix_cache = StaticPrefixCache(self.model.config)

    def clear_caches(self) -> None:
        self.vision_cache.clear()
        self.prefix_cache.clear()

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        """(width, height) the vision encoder sees an image of ``size`` at ``budget``."""
        ip = self.processor.image_processor
        budget = self.default_budget if budget is None else budget
        return gemma4_seen_size(size, budget, ip.patch_size, ip.pooling_kernel_size)

    def encode(self, images: Sequence[Image.Image], budget: int) -> tuple[list[tuple[str, EncodedImage]], int]:
        """Each image's content hash and encoding at ``budget``, with how many went through the vision tower.

        Cached ones come from the vision cache; the others are preprocessed and encoded together
        in one vision-tower call, each distinct picture once.
        """
        import torch

        keys = [image_key(image) for image in images]
        found: dict[str, EncodedImage] = {}
        todo: dict[str, Image.Image] = {}
        for key, image in zip(keys, images):
            if key in found or key in todo:
                continue
            cached = self.vision_cache.get((self.model_id, key, budget))
            if cached is None:
                todo[key] = image
            else:
                found[key] = cached
        if todo:
            pixels = self.processor.image_processor(list(todo.values()), max_soft_tokens=budget, return_tensors="pt")
            with torch.inference_mode():
                encoded = self.model.get_image_features(
                    pixels["pixel_values"].to(self.model.device, self.compute_dtype),
                    pixels["image_position_ids"].to(self.model.device),
                ).pooler_output
            for key, features, count in zip(todo, encoded, pixels["num_soft_tokens_per_image"].tolist()):
                if features.shape[0] != count:
                    raise RuntimeError(f"the vision tower gave {features.shape[0]} soft tokens where {count} were expected")
                found[key] = EncodedImage(int(count), features)
                self.vision_cache.keep((self.model_id, key, budget), found[key])
        return [(key, found[key]) for key in keys], len(todo)

    def prompt(self, messages: list[dict[str, Any]], budget: int, tools: list[dict[str, Any]] | None = None) -> Prompt:
        """The prompt for ``messages`` at ``budget``, its images encoded or taken from the vision cache."""
        import torch
        from transformers import BatchFeature

        processor = self.processor
        images = message_images(messages)
        text = processor.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        pieces = text.split(processor.image_token)
        if len(pieces) != len(images) + 1:
            raise InvalidRequest(
                f"The text contains Gemma 4's image placeholder {processor.image_token}; remove it and attach "
                "images as images."
            )
        encoded, computed = self.encode(images, budget)
        soft = [f"{processor.boi_token}{processor.image_token * e.soft_tokens}{processor.eoi_token}" for _, e in encoded]
        text = pieces[0] + "".join(image + piece for image, piece in zip(soft, pieces[1:]))
        tokenizer = processor.tokenizer
        # As the processor does: a template that writes <bos> itself gets no second one.
        tokens = tokenizer([text], add_special_tokens=not text.startswith(tokenizer.bos_token), return_tensors="pt")
        types = torch.tensor(processor.create_mm_token_type_ids(tokens["input_ids"]))
        inputs = BatchFeature({**tokens, "mm_token_type_ids": types})
        ids = inputs["input_ids"][0].tolist()
        blocks = image_blocks(ids, self.image_token_id, [(key, budget) for key, _ in encoded])
        return Prompt(inputs, blocks, [e.features for _, e in encoded], vision_report(len({k for k, _ in encoded}), computed))

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
        if not self.reuses_encodings:
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
        prompt = self.prompt(messages, budget, tools)
        ids = prompt.ids
        kv, reused = self.prefix_cache.begin(ids, prompt.blocks, len(ids) + options.max_new_tokens)
        generation = self.generate(
            prompt.inputs, options, budget=budget, watch=watch, history_turns=history_turns,
            model_kwargs={cache_kwarg(): kv, **image_inputs(prompt.features_from(reused))},
        )
        # The cache holds every token but the last generated one, which was never fed back.
        self.prefix_cache.end(ids + generation.token_ids[:-1], prompt.blocks, kv)
        generation.cache = CacheReport(vision=prompt.vision, reused_prompt_tokens=reused)
        return generation

    def task_messages(self, task: Task, image: Image.Image, prompt: str, labels: Sequence[str]) -> list[dict[str, Any]]:
        if task == "detect":
            text = prompts.gemma4_detect(labels)
        elif task == "ocr":
            text = prompts.GEMMA4_OCR
        else:
            text = prompts.gemma4_describe(prompt, 1)
        return build_messages([image], text, ())

    def at_budgets(
        self,
        task: Task,
        image: Image.Image,
        prompt: str,
        labels: Sequence[str],
        budgets: Sequence[int],
        options: GenerationOptions,
        progress: Progress | None = None,
    ) -> list[tuple[Generation, ParsedDetections | None]]:
        """The budgets as one batch: each budget's prompt encoded and prefilled alone, then one shared decode.

        Decoding is bound by reading the weights, so five rows cost about what one does; prefilling
        each row unpadded keeps the prefill at what the five calls alone would cost (``generate_rows``).
        Batching shifts the float arithmetic of the decoding steps a little, so a row may differ
        from the same budget run alone where two tokens were nearly tied.
        """
        if not self.reuses_encodings:
            return super().at_budgets(task, image, prompt, labels, budgets, options, progress)
        for budget in budgets:
            check_budget(budget, self.budgets, self.display_name)
        watch = Stopwatch()
        messages = self.task_messages(task, image, prompt, labels)
        rows, encode_ms = [], []
        for n, budget in enumerate(budgets):
            if progress:
                progress(n, len(budgets), f"budget {budget}")
            rows.append(self.prompt(messages, budget))
            encode_ms.append(watch.lap())
        generations = self.generate_rows(
            [(row.inputs, image_inputs(row.features)) for row in rows], options, budgets=budgets, encode_ms=encode_ms
        )
        runs: list[tuple[Generation, ParsedDetections | None]] = []
        for generation, row in zip(generations, rows):
            generation.cache = CacheReport(vision=row.vision)
            parsed = from_box_2d_json(generation.text, image.size, grid=self.grid) if task == "detect" else None
            runs.append((generation, parsed))
        return runs

    def on_images(
        self,
        task: Task,
        images: Sequence[Image.Image],
        prompt: str,
        labels: Sequence[str],
        budget: int | None,
        options: GenerationOptions,
    ) -> list[tuple[Generation, ParsedDetections | None]]:
        """The images (tiles, crops) at one budget as one batch, the way ``at_budgets`` runs budgets."""
        if not self.reuses_encodings or len(images) < 2:
            return super().on_images(task, images, prompt, labels, budget, options)
        budget = check_budget(self.default_budget if budget is None else budget, self.budgets, self.display_name)
        watch = Stopwatch()
        rows, encode_ms = [], []
        for image in images:
            rows.append(self.prompt(self.task_messages(task, image, prompt, labels), budget))
            encode_ms.append(watch.lap())
        generations = self.generate_rows(
            [(row.inputs, image_inputs(row.features)) for row in rows], options, budgets=[budget] * len(rows),
            encode_ms=encode_ms,
        )
        runs: list[tuple[Generation, ParsedDetections | None]] = []
        for generation, row, image in zip(generations, rows, images):
            generation.cache = CacheReport(vision=row.vision)
            parsed = from_box_2d_json(generation.text, image.size, grid=self.grid) if task == "detect" else None
            runs.append((generation, parsed))
        return runs

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
        return self.run(self.task_messages("ocr", image, "", ()), budget, options)

    def detect(
        self, image: Image.Image, labels: Sequence[str], budget: int | None, options: GenerationOptions
    ) -> tuple[Generation, ParsedDetections]:
        generation = self.run(self.task_messages("detect", image, "", labels), budget, options)
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

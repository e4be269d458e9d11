"""Gemma 4: its chat template, per-call visual-token budgets, ``box_2d`` detections, native tool calls.

Budgets. A budget caps the soft tokens an image becomes: the encoder sees at most
``budget * 9`` 16-px patches, pooled 3x3, so a square image gives
``floor(sqrt(budget))**2`` tokens (64 / 121 / 256 / 529 / 1089).

The dialect (``Gemma4``) runs on any runtime. On the local one it brings its own runtime
(``Gemma4Runtime``), which does no work twice: each image is encoded once per budget
(``tools.runtimes.cache.VisionCache``) and reaches the model as features (``mm_encoder_outputs``), so a
prompt is built from text alone: the template's image placeholders are expanded to as many soft
tokens as the cached encoding has, which is what the processor would do after preprocessing the
pixels. A prompt that starts like an earlier one, with the same images, resumes from that call's
KV cache (``tools.runtimes.cache.PrefixCache``) and prefills only the rest. ``generate_many`` runs one
task at several budgets as one left-padded batch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..runtimes.cache import DynamicPrefixCache, EncodedImage, ImageBlock, PrefixCache, StaticPrefixCache, VisionCache, image_blocks
from ..boxes.detections import ParsedDetections, from_json_boxes
from ..errors import InvalidRequest
from ..inputs import ImageInput
from ..options import GenerationOptions
from ..results import CacheReport
from ..runtimes.decoding import constrained
from ..runtimes.local import LocalRuntime, cache_kwarg, local_messages
from ..tasks import Answer, Ask, Capabilities, Generation, Message, Progress, Prompt, Stopwatch
from ..toolcalls import CHAT_SYSTEM, CHAT_TOOLS, parse_reply
from .base import BudgetedChatDialect, TokenCounter, chat_messages, describe_text, extract_text, video_messages


#: the visual-token budgets a call may ask for, and the one a call without a budget gets
BUDGETS: tuple[int, ...] = (70, 140, 280, 560, 1120)
DEFAULT_BUDGET = 280
#: a clip's frames: a lower budget each, as Gemma 4's video processor defaults to
VIDEO_BUDGET = 70
#: the image processor: 16-px patches, pooled 3x3 into one soft token
PATCH = 16
POOLING = 3
#: box_2d values run 0..1000 inclusive: real outputs reach 1000 at the right edge
GRID = 1000
BOX_KEY = "box_2d"

OCR = (
    "Read all the text in this image, in reading order, in its original language and script. "
    "Keep the line breaks. Output only the text."
)


def detect_text(labels: Sequence[str]) -> str:
    """The detection request the Gemma 4 guide uses ("detect person and car, output only ```json")."""
    names = list(labels)
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"detect {listed}, output only ```json"


def square_image_tokens(budget: int) -> int:
    """Image tokens a square image gets at ``budget``: at most ``budget * 9`` patches, pooled 3x3."""
    return math.isqrt(budget) ** 2


def encoder_size(size: tuple[int, int], budget: int, patch: int = PATCH, pooling: int = POOLING) -> tuple[int, int]:
    """(width, height) Gemma 4's vision encoder sees an image of ``size`` at ``budget``."""
    from transformers.models.gemma4.image_processing_gemma4 import get_aspect_ratio_preserving_size

    width, height = size
    h, w = get_aspect_ratio_preserving_size(height, width, patch, budget * pooling**2, pooling)
    return w, h


def from_box_2d_json(text: str, size: tuple[int, int]) -> ParsedDetections:
    """Boxes from Gemma 4's ``{"box_2d": [y1, x1, y2, x2], "label": ...}`` items, y first, on a 0..1000 grid."""
    return from_json_boxes(text, size, key=BOX_KEY, order="yx", grid=GRID)


class Gemma4(BudgetedChatDialect):
    family = "gemma4"
    display_name = "Gemma 4"
    model_types = ("gemma4",)
    tasks = frozenset({"describe", "ocr", "detect", "chat", "extract"})
    budget_values = BUDGETS
    default_budget = DEFAULT_BUDGET
    box_grid = GRID
    box_order = "yx"
    video = True
    #: the video processor's own per-frame default (max_soft_tokens 70), which the Gemma 4 guide advises for clips
    video_budget = VIDEO_BUDGET
    box_key = BOX_KEY

    def __init__(self, capabilities: Capabilities, patch: int = PATCH, pooling: int = POOLING) -> None:
        super().__init__(capabilities)
        #: the image processor's patch side and pooling, for the size the encoder sees
        self.patch, self.pooling = patch, pooling

    @classmethod
    def for_config(cls, config: Any) -> Gemma4:
        vision = getattr(config, "vision_config", None)
        return cls(
            cls.from_config(config),
            int(getattr(vision, "patch_size", PATCH)),
            int(getattr(vision, "pooling_kernel_size", POOLING)),
        )

    def prompt(self, ask: Ask, count_tokens: TokenCounter | None = None) -> Prompt:
        if ask.video is not None:
            return Prompt(
                images=[image for turn in ask.history for image in turn.images],
                messages=video_messages(ask.video, ask.prompt, ask.history),
                budget=ask.budget,
                processor_kwargs={} if ask.budget is None else {"videos_kwargs": {"max_soft_tokens": ask.budget}},
                history_turns=len(ask.history),
                videos=[ask.video],
            )
        history: Sequence[Any] = ()
        system: list[Message] = []
        tools = None
        if ask.task == "detect":
            text = detect_text(ask.labels)
        elif ask.task == "ocr":
            text = OCR
        elif ask.task == "extract":
            text = extract_text(ask.prompt, len(ask.images))
        elif ask.task == "chat":
            text, history, tools = ask.prompt, ask.history, CHAT_TOOLS
            system = [{"role": "system", "content": CHAT_SYSTEM}]
        else:
            text, history = describe_text(ask.prompt, len(ask.images)), ask.history
        messages = [*system, *chat_messages(ask.images, text, history)]
        return Prompt(
            images=[*(image for turn in history for image in turn.images), *ask.images],
            messages=messages,
            budget=ask.budget,
            processor_kwargs=self.processor_kwargs(ask.budget),
            tools=tools,
            history_turns=len(history),
            schema=ask.schema,
            answer_schema=self.answer_schema(ask),
        )

    def processor_kwargs(self, budget: int | None) -> dict[str, Any]:
        return {} if budget is None else {"max_soft_tokens": budget}

    def parse(self, ask: Ask, generation: Generation) -> Answer:
        if ask.task == "chat":
            if generation.tool_calls is not None:  # an engine parsed them already
                return Answer(generation, reply=generation.tool_calls)
            known = {tool["function"]["name"] for tool in CHAT_TOOLS}
            return Answer(generation, reply=parse_reply(generation.raw_text, known))
        return super().parse(ask, generation)

    def parse_boxes(self, text: str, size: tuple[int, int]) -> ParsedDetections:
        return from_box_2d_json(text, size)

    def seen_size(self, size: tuple[int, int], budget: int | None) -> tuple[int, int]:
        if not self.capabilities.budgets:
            return size
        budget = self.capabilities.default_budget if budget is None else budget
        return encoder_size(size, budget, self.patch, self.pooling)


def message_images(messages: Sequence[Message]) -> list[ImageInput]:
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
class Encoded:
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


class Gemma4Runtime(LocalRuntime):
    """The local runtime with Gemma 4's vision cache, prefix KV cache and batched budgets."""

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

    def encode(self, images: Sequence[ImageInput], budget: int) -> tuple[list[tuple[str, EncodedImage]], int]:
        """Each image's content hash and encoding at ``budget``, with how many went through the vision tower.

        Cached ones come from the vision cache; the others are preprocessed and encoded together
        in one vision-tower call, each distinct picture once.
        """
        import torch

        keys = [image.hash for image in images]
        found: dict[str, EncodedImage] = {}
        todo: dict[str, ImageInput] = {}
        for image in images:
            key = image.hash
            if key in found or key in todo:
                continue
            cached = self.vision_cache.get((self.model_id, key, budget))
            if cached is None:
                todo[key] = image
            else:
                found[key] = cached
        if todo:
            pixels = self.processor.image_processor(
                [image.pixels for image in todo.values()], max_soft_tokens=budget, return_tensors="pt"
            )
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

    def encoded(self, prompt: Prompt) -> Encoded:
        """The prompt's tokens at its budget, its images encoded or taken from the vision cache."""
        import torch
        from transformers import BatchFeature

        assert prompt.messages is not None and prompt.budget is not None
        processor = self.processor
        images = message_images(prompt.messages)
        text = processor.apply_chat_template(
            local_messages(prompt.messages), tools=prompt.tools, add_generation_prompt=True, tokenize=False
        )
        pieces = text.split(processor.image_token)
        if len(pieces) != len(images) + 1:
            raise InvalidRequest(
                f"The text contains Gemma 4's image placeholder {processor.image_token}; remove it and attach "
                "images as images."
            )
        encoded, computed = self.encode(images, prompt.budget)
        soft = [f"{processor.boi_token}{processor.image_token * e.soft_tokens}{processor.eoi_token}" for _, e in encoded]
        text = pieces[0] + "".join(image + piece for image, piece in zip(soft, pieces[1:]))
        tokenizer = processor.tokenizer
        # As the processor does: a template that writes <bos> itself gets no second one.
        tokens = tokenizer([text], add_special_tokens=not text.startswith(tokenizer.bos_token), return_tensors="pt")
        types = torch.tensor(processor.create_mm_token_type_ids(tokens["input_ids"]))
        inputs = BatchFeature({**tokens, "mm_token_type_ids": types})
        ids = inputs["input_ids"][0].tolist()
        blocks = image_blocks(ids, self.image_token_id, [(key, prompt.budget) for key, _ in encoded])
        return Encoded(inputs, blocks, [e.features for _, e in encoded], vision_report(len({k for k, _ in encoded}), computed))

    def generate(self, prompt: Prompt, options: GenerationOptions) -> Generation:
        if prompt.videos and len(prompt.videos) == 1 and not prompt.images and self.reuses_encodings:
            return self.generate_video(prompt, options)
        if prompt.messages is None or prompt.budget is None or not self.reuses_encodings or prompt.videos:
            return super().generate(prompt, options)
        watch = Stopwatch()
        encoded = self.encoded(prompt)
        ids = encoded.ids
        constraint = self.constraint(prompt)
        kv, reused = self.prefix_cache.begin(ids, encoded.blocks, len(ids) + options.max_new_tokens)
        generation = self.generate_inputs(
            encoded.inputs, options, budget=prompt.budget, watch=watch, history_turns=prompt.history_turns,
            model_kwargs={cache_kwarg(): kv, **image_inputs(encoded.features_from(reused)), **constrained(constraint)},
        )
        self.score(generation, constraint)
        # The cache holds every token but the last generated one, which was never fed back.
        self.prefix_cache.end(ids + generation.token_ids[:-1], encoded.blocks, kv)
        generation.cache = CacheReport(vision=encoded.vision, reused_prompt_tokens=reused)
        generation.notes[:0] = prompt.notes
        return generation

    def generate_video(self, prompt: Prompt, options: GenerationOptions) -> Generation:
        """A clip through the processor's video path, each frame's encoding kept in the vision cache by the
        clip's content hash and the frame's index (and the budget): a second question about the same clip
        runs no frame through the vision tower again. The processor still writes the prompt (timestamps,
        soft tokens per frame) and sizes the frames; only the tower's work is reused."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        watch = Stopwatch()
        inputs = self.video_inputs(prompt)
        clip = prompt.videos[0]
        budget = int(prompt.budget or VIDEO_BUDGET)
        keys = [(self.model_id, f"{clip.hash}:frame{index}", budget) for index in clip.indices]
        found: list[EncodedImage | None] = [self.vision_cache.get(key) for key in keys]
        missing = [n for n, encoded in enumerate(found) if encoded is None]
        if missing:
            pixels = inputs["pixel_values_videos"][missing].to(self.model.device, self.compute_dtype)
            positions = inputs["video_position_ids"][missing].to(self.model.device)
            # The conditional-generation class exposes the image tower; the video one is its inner model's.
            tower = getattr(self.model, "get_video_features", None) or self.model.model.get_video_features
            with torch.inference_mode():
                pooled = tower(
                    pixels, positions, num_frames_per_video=torch.tensor([len(missing)])
                ).pooler_output[0]
            per_frame = pooled.shape[0] // len(missing)
            for k, n in enumerate(missing):
                found[n] = EncodedImage(per_frame, pooled[k * per_frame:(k + 1) * per_frame])
                self.vision_cache.keep(keys[n], found[n])  # type: ignore[arg-type]
        features = torch.cat([encoded.features for encoded in found if encoded is not None])
        for name in ("pixel_values_videos", "video_position_ids", "num_frames_per_video"):
            inputs.pop(name, None)
        generation = self.generate_inputs(
            inputs, options, budget=prompt.budget, watch=watch, history_turns=prompt.history_turns,
            model_kwargs={"mm_encoder_outputs": {"video": BaseModelOutputWithPooling(pooler_output=(features,))}},
        )
        generation.cache = CacheReport(vision=vision_report(len(keys), len(missing)))
        generation.notes[:0] = prompt.notes
        return generation

    def generate_many(
        self, prompts: Sequence[Prompt], options: GenerationOptions, progress: Progress | None = None
    ) -> list[Generation]:
        """The prompts as one batch: each prompt encoded and prefilled alone, then one shared decode.

        Decoding is bound by reading the weights, so five rows cost about what one does; prefilling
        each row unpadded keeps the prefill at what the calls alone would cost (``generate_rows``).
        Batching shifts the float arithmetic of the decoding steps a little, so a row may differ
        from the same prompt run alone where two tokens were nearly tied.
        """
        if len(prompts) < 2 or not self.reuses_encodings or any(
            p.messages is None or p.budget is None or p.schema is not None or p.videos for p in prompts
        ):
            # One prompt alone goes the ordinary way, which also resumes from the prefix cache; prompts
            # under a schema too (a batch would carry each row's grammar across the prefill and decode).
            return super().generate_many(prompts, options, progress)
        watch = Stopwatch()
        rows, encode_ms = [], []
        for n, prompt in enumerate(prompts):
            options.check_cancelled()  # between encodings: a cancelled call encodes no further tile or budget
            if progress:
                progress(n, len(prompts), f"budget {prompt.budget}")
            rows.append(self.encoded(prompt))
            encode_ms.append(watch.lap())
        generations = self.generate_rows(
            [(row.inputs, image_inputs(row.features)) for row in rows], options,
            budgets=[p.budget for p in prompts], encode_ms=encode_ms,
        )
        for generation, row, prompt in zip(generations, rows, prompts):
            generation.cache = CacheReport(vision=row.vision)
            generation.notes[:0] = prompt.notes
        return generations


Gemma4.local_runtime = Gemma4Runtime

"""The local runtime: a transformers model resident in this process.

Loading (dtype, 4/8-bit, compile), turning a family's prompt into model inputs (its chat
template for messages, its processor for a plain text), generating with cancellation and
streaming, and accounting for every token. Nothing here knows a family's wording.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from . import accel
from ..errors import ContextOverflow, InvalidRequest, OutOfMemory
from ..options import GenerationOptions
from ..results import BudgetTimings
from .decoding import StopOnCancel, constrained, decode_batch
from .loading import check_compile, model_not_found, quantization_config, torch_dtype
from .streaming import answer_text, current_sink, text_streamer
from ..inputs.media import ClipInput
from ..tasks import Generation, Message, Prompt, Stopwatch, cut_note
from ..text import tokenizer_control_strings
from .base import Runtime

log = logging.getLogger("vlm_agent")

@functools.cache
def cache_kwarg() -> str:
    """The name ``generate`` takes a KV cache to resume under: ``cache`` since transformers
    renamed ``past_key_values`` (which now warns), the old name before that."""
    from transformers.generation import utils

    # transformers lists the current name first, then the deprecated ones.
    return getattr(utils, "ALL_CACHE_NAMES", ["past_key_values"])[0]


def local_messages(messages: list[Message]) -> list[Message]:
    """Messages as the processor's chat template takes them: decoded pixels for image parts; a video part
    only marks its place (the frames go to the processor beside the text)."""
    out = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [
                {"type": "image", "image": part["image"].pixels} if part.get("type") == "image"
                else {"type": "video"} if part.get("type") == "video" else part
                for part in content
            ]
        out.append({**message, "content": content})
    return out


def video_arrays(clips: Sequence[ClipInput]) -> tuple[list[Any], list[Any]]:
    """Each clip's frames as one (frames, height, width, 3) array, and the metadata its timestamps come from:
    the frames' own indices in the clip over its frame rate."""
    import numpy as np
    from transformers.video_utils import VideoMetadata

    arrays, metadata = [], []
    for clip in clips:
        width, height = clip.size
        arrays.append(np.stack([np.asarray(frame.pixels) for frame in clip.frames]))
        metadata.append(VideoMetadata(
            total_num_frames=clip.total_frames, fps=clip.fps, width=width, height=height,
            duration=clip.total_frames / clip.fps if clip.fps else None, video_backend="pyav",
            frames_indices=list(clip.indices),
        ))
    return arrays, metadata


class LocalRuntime(Runtime):
    """A transformers model and processor, resident for the process."""

    kind = "local"
    #: whether ``compile=True`` (static KV cache, compiled decoding) is implemented for this runtime
    compiles: ClassVar[bool] = False

    def __init__(self, model_id: str, model: Any, processor: Any) -> None:
        super().__init__(model_id)
        self.model = model
        self.processor = processor
        self.load_s: float = 0.0
        self.compiled = False
        #: head dim -> fused SDPA kernels that take it (CUDA only), filled by ``warm_up``
        self.attention_kernels: dict[int, list[str]] = {}
        #: the tokenizer as the schema-constrained decoder reads it, built on the first extraction
        self._grammars: Any = None

    def control_strings(self) -> set[str]:
        # The tokenizer knows every string that becomes a control token; the known list covers the markup.
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return tokenizer_control_strings(tokenizer) | super().control_strings()

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        model_class: str = "AutoModelForImageTextToText",
        dtype: str = "auto",
        device_map: str | None = "auto",
        quantize: str | None = None,
        compile: bool = False,
    ) -> LocalRuntime:
        import transformers

        started = time.perf_counter()
        model_cls = getattr(transformers, model_class)
        precision = torch_dtype(dtype)
        quantization = quantization_config(quantize, dtype)
        check_compile(cls.compiles, compile)
        extra = {} if quantization is None else {"quantization_config": quantization}
        try:
            processor = transformers.AutoProcessor.from_pretrained(model_id)
            model = model_cls.from_pretrained(
                model_id, dtype=precision, device_map=device_map, **extra, **accel.load_kwargs()
            )
        except OSError as exc:
            log.debug("loading %s failed: %s", model_id, exc)
            raise model_not_found(model_id) from None
        runtime = cls(model_id, model.eval(), processor)
        if compile:
            runtime.enable_compile()
        runtime.load_s = round(time.perf_counter() - started, 3)
        return runtime

    def enable_compile(self) -> None:
        """Compile the decoding step (CUDA graphs); transformers does so when the KV cache is a static one,
        which the runtime passes. The first calls pay the compilation."""
        self.model.generation_config.compile_config = accel.compile_config()
        self.compiled = True

    def probe_kernels(self) -> None:
        """Before the warm-up run: which fused attention kernels take this model's head dims."""
        dims = accel.head_dims(self.model.config.get_text_config())
        self.attention_kernels = accel.fused_attention_kernels(dims, self.compute_dtype)

    @property
    def warm_up_runs(self) -> int:
        # CUDA graphs are recorded on the second and third run of a compiled step.
        return 3 if self.compiled else 1

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def compute_dtype(self) -> Any:
        """The precision the model computes in. Not ``model.dtype``: that is the first parameter's, and
        BLIP-2 keeps its Q-Former in float32 under float16 weights."""
        return self.model.get_input_embeddings().weight.dtype

    @property
    def dtype(self) -> str:
        return str(self.compute_dtype).removeprefix("torch.")

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def context_tokens(self) -> int | None:
        config = self.model.config.get_text_config()
        return getattr(config, "max_position_embeddings", None)

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config.get_text_config(), "is_encoder_decoder", False))

    def token_counter(self) -> Callable[[str], int]:
        tokenizer = self.processor.tokenizer
        return lambda text: len(tokenizer(text)["input_ids"])

    def generate(self, prompt: Prompt, options: GenerationOptions) -> Generation:
        watch = Stopwatch()
        constraint = self.constraint(prompt)
        generation = self.generate_inputs(
            self.inputs(prompt), options, budget=prompt.budget, watch=watch, history_turns=prompt.history_turns,
            model_kwargs=constrained(constraint),
        )
        self.score(generation, constraint)
        generation.notes[:0] = prompt.notes
        return generation

    # -- decoding under a schema (extract) --------------------------------------------

    def grammars(self) -> Any:
        """llguidance's view of this model's tokenizer, built once (``tools.extract.grammar``)."""
        if self._grammars is None:
            from ..extract.grammar import Grammars

            vocab = int(self.model.config.get_text_config().vocab_size)
            self._grammars = Grammars(self.processor.tokenizer, vocab, sorted(self.stop_token_ids()))
        return self._grammars

    def constraint(self, prompt: Prompt) -> Any:
        """A fresh logits processor holding generation to the prompt's schema; None without one."""
        return None if prompt.schema is None else self.grammars().constraint(prompt.schema)

    def score(self, generation: Generation, constraint: Any) -> None:
        """Each token's bytes and its probability under the schema, for the fields' confidence."""
        if constraint is not None:
            grammars = self.grammars()
            generation.scored = [(grammars.token_bytes(token), p) for token, p in constraint.probabilities()]

    def inputs(self, prompt: Prompt) -> Any:
        """Model inputs: messages through the checkpoint's chat template, a text through the processor."""
        if prompt.videos:
            return self.video_inputs(prompt)
        if prompt.messages is not None:
            return self.processor.apply_chat_template(
                local_messages(prompt.messages),
                tools=prompt.tools,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                processor_kwargs=prompt.processor_kwargs,
            )
        inputs = self.processor(
            images=[image.pixels for image in prompt.images], text=prompt.text, return_tensors="pt",
            **prompt.processor_kwargs,
        )
        # PaliGemma's processor adds training labels, which generate() has no use for.
        inputs.pop("labels", None)
        return inputs

    def video_inputs(self, prompt: Prompt) -> Any:
        """A prompt with clips: the chat template's text, then the processor with our own decoded frames and
        their metadata (``do_sample_frames=False``: the frames were chosen already, and timestamps follow them)."""
        assert prompt.messages is not None
        processor = self.processor
        text = processor.apply_chat_template(
            local_messages(prompt.messages), tools=prompt.tools, add_generation_prompt=True, tokenize=False
        )
        token = processor.video_token
        start, end = getattr(processor, "vision_start_token", None), getattr(processor, "vision_end_token", None)
        if start and end:
            # Qwen3-VL's template wraps the placeholder, and its processor writes its own wrapper around
            # every pair of frames: the template's would nest around them (transformers 5.24).
            text = text.replace(start + token + end, token)
        if text.count(token) != len(prompt.videos):
            raise InvalidRequest("The text contains the model's video placeholder; remove it and send the clip as a clip.")
        videos, metadata = video_arrays(prompt.videos)
        inputs = processor(
            text=[text], images=[image.pixels for image in prompt.images] or None, videos=videos,
            video_metadata=metadata, do_sample_frames=False, return_tensors="pt", **prompt.processor_kwargs,
        )
        inputs.pop("video_metadata", None)
        return inputs

    @property
    def video_token_id(self) -> int | None:
        value = getattr(self.model.config, "video_token_id", None)
        return None if value is None else int(value)

    def count_image_tokens(self, input_ids: Any) -> Any:
        """Image tokens per row, video frames' soft tokens included."""
        count = (input_ids == self.image_token_id).sum(dim=-1)
        if self.video_token_id is not None:
            count = count + (input_ids == self.video_token_id).sum(dim=-1)
        return count

    def stop_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def generate_inputs(
        self,
        inputs: Any,
        options: GenerationOptions,
        *,
        budget: int | None,
        watch: Stopwatch,
        history_turns: int = 0,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> Generation:
        """Run ``generate`` on processor output and account for every token.

        ``model_kwargs`` go to ``model.generate`` as they are (a KV cache to resume, encoded images).
        """
        input_ids = inputs["input_ids"]
        prompt_tokens = int(input_ids.shape[1])
        image_tokens = int(self.count_image_tokens(input_ids).sum())
        self.check_context(prompt_tokens, image_tokens, options)
        inputs = inputs.to(self.model.device, dtype=self.compute_dtype)
        preprocess_ms = watch.lap()
        output = self.call_generate(inputs, {**self.decode_kwargs(options), **(model_kwargs or {})}, options)
        generate_ms = watch.lap()
        # A decoder-only model returns the prompt too; an encoder-decoder one (Flan-T5) only the
        # decoder's tokens, after its start token.
        new = output[0, 1:].tolist() if self.is_encoder_decoder else output[0, prompt_tokens:].tolist()
        generation = self.generation(new, image_tokens, prompt_tokens, budget, options, history_turns)
        generation.timings.preprocess_ms = preprocess_ms
        generation.timings.generate_ms = generate_ms
        generation.timings.total_ms = watch.total()
        return generation

    def generate_batch(
        self,
        inputs: Any,
        options: GenerationOptions,
        *,
        budgets: Sequence[int | None],
        watch: Stopwatch,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> list[Generation]:
        """``generate`` over left-padded rows, one Generation per row; each row reports the batch's timings."""
        input_ids = inputs["input_ids"]
        width = int(input_ids.shape[1])
        image_tokens = (input_ids == self.image_token_id).sum(dim=1).tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        self.check_context(width, max(image_tokens), options)
        inputs = inputs.to(self.model.device, dtype=self.compute_dtype)
        preprocess_ms = watch.lap()
        # No streamer: streamers take one sequence.
        kwargs = self.decode_kwargs(options, stream=False)
        output = self.call_generate(inputs, {**kwargs, **(model_kwargs or {})}, options)
        generate_ms = watch.lap()
        stop = self.stop_token_ids()
        generations = []
        for row, budget, images, prompt in zip(output[:, width:].tolist(), budgets, image_tokens, prompt_tokens):
            # A row that stopped early is padded to the longest; its answer ends at its stop token.
            end = next((n + 1 for n, token in enumerate(row) if token in stop), len(row))
            generation = self.generation(row[:end], int(images), int(prompt), budget, options, 0)
            generation.timings.preprocess_ms = preprocess_ms
            generation.timings.generate_ms = generate_ms
            generation.timings.total_ms = watch.total()
            generations.append(generation)
        return generations

    def generate_rows(
        self,
        rows: Sequence[tuple[Any, Mapping[str, Any]]],
        options: GenerationOptions,
        *,
        budgets: Sequence[int | None],
        encode_ms: Sequence[float],
    ) -> list[Generation]:
        """Several one-row prompts: each prefilled alone, unpadded, then all decoded as one batch.

        ``rows`` are (processor output of one row, ``generate`` keyword arguments for its prefill,
        such as encoded images). A left-padded batch would prefill every row at the longest row's
        length; here each row's prefill costs what it costs alone and yields its first token as a
        plain ``generate`` would, and only the decoding steps, bound by reading the weights, are
        shared. Each Generation reports its own encoding (``encode_ms``) and prefill and the shared
        decode (``BudgetTimings``).
        """
        from transformers import DynamicCache

        kwargs = self.decode_kwargs(options, stream=False)
        first = {**kwargs, "max_new_tokens": 1}
        if options.min_new_tokens is not None:
            first["min_new_tokens"] = min(1, options.min_new_tokens)
        stop = self.stop_token_ids()
        prefilled = []
        for inputs, extra in rows:
            input_ids = inputs["input_ids"]
            self.check_context(int(input_ids.shape[1]), int((input_ids == self.image_token_id).sum()), options)
            watch = Stopwatch()
            inputs = inputs.to(self.model.device, dtype=self.compute_dtype)
            # No config: full-length layers on every layer, which the batch below can pad and stack.
            kv = DynamicCache()
            output = self.call_generate(inputs, {**first, **extra, cache_kwarg(): kv}, options)
            prefilled.append((inputs, output[0, input_ids.shape[1]:].tolist(), kv, watch.lap()))
        # Rows already finished (a stop token first, or one token asked for) sit out the decoding.
        going = [n for n, (_, new, _, _) in enumerate(prefilled) if options.max_new_tokens > 1 and new[-1] not in stop]
        watch = Stopwatch()
        tails: dict[int, list[int]] = {}
        if going:
            batch, kv, width = decode_batch([prefilled[n] for n in going], self.processor.tokenizer.pad_token_id)
            rest = {**kwargs, "max_new_tokens": options.max_new_tokens - 1, cache_kwarg(): kv}
            if options.min_new_tokens is not None and options.min_new_tokens > 1:
                rest["min_new_tokens"] = options.min_new_tokens - 1
            else:
                rest.pop("min_new_tokens", None)
            output = self.call_generate(batch, rest, options)
            for n, row in zip(going, output[:, width:].tolist()):
                # A row that stopped early is padded to the longest; its answer ends at its stop token.
                tails[n] = row[: next((k + 1 for k, token in enumerate(row) if token in stop), len(row))]
        decode_ms = watch.lap() if going else 0.0
        generations = []
        for n, ((inputs, new, _, prefill_ms), budget, encoded) in enumerate(zip(prefilled, budgets, encode_ms)):
            input_ids = inputs["input_ids"]
            generation = self.generation(
                new + tails.get(n, []), int((input_ids == self.image_token_id).sum()), int(input_ids.shape[1]),
                budget, options, 0,
            )
            generation.timings = BudgetTimings(
                preprocess_ms=encoded, prefill_ms=prefill_ms, decode_ms=decode_ms,
                generate_ms=round(prefill_ms + decode_ms, 2), total_ms=round(encoded + prefill_ms + decode_ms, 2),
            )
            generations.append(generation)
        return generations

    def check_context(self, prompt_tokens: int, image_tokens: int, options: GenerationOptions) -> None:
        limit = self.context_tokens()
        if limit is not None and prompt_tokens + options.max_new_tokens > limit:
            raise ContextOverflow(
                f"The prompt is {prompt_tokens} tokens ({image_tokens} of them image tokens) and "
                f"{options.max_new_tokens} more were asked for, past this model's {limit}; use fewer "
                "images, a lower budget, a shorter history or a smaller max_new_tokens."
            )

    def decode_kwargs(self, options: GenerationOptions, stream: bool = True) -> dict[str, Any]:
        """``model.generate`` arguments: the decoding options, the caller's stream, the cancel check."""
        kwargs = options.generate_kwargs()
        if not options.greedy:
            # Sampling draws from the probabilities, which a NaN or infinite logit makes invalid: transformers then
            # raises mid-answer. Seen on the random tiny Gemma 4 now and then in a long test run (never alone).
            kwargs["remove_invalid_values"] = True
        sink = current_sink() if stream else None
        if sink is not None:
            kwargs["streamer"] = text_streamer(self.processor, sink)
        if options.cancel is not None:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnCancel(options.cancel)])
        return kwargs

    def call_generate(self, inputs: Any, kwargs: dict[str, Any], options: GenerationOptions) -> Any:
        """``model.generate``, with running out of device memory and cancelling as request errors."""
        import torch

        options.check_cancelled()
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **kwargs)
        except torch.OutOfMemoryError:
            # What the caches hold is only worth keeping while memory is not short.
            self.clear_caches()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfMemory(
                "The model ran out of device memory on this request; try a lower budget, fewer images "
                "or a smaller max_new_tokens."
            ) from None
        # Cut short by the cancel: its text would pass for a complete answer.
        options.check_cancelled()
        return output

    def generation(
        self,
        new: list[int],
        image_tokens: int,
        prompt_tokens: int,
        budget: int | None,
        options: GenerationOptions,
        history_turns: int,
    ) -> Generation:
        """A Generation from the new token ids of one sequence."""
        stop = self.stop_token_ids()
        finish = "stop" if new and new[-1] in stop else "length"
        generation = Generation(
            text=answer_text(self.processor.decode(new, skip_special_tokens=True)),
            raw_text=self.processor.decode(new, skip_special_tokens=False),
            image_tokens=image_tokens,
            prompt_tokens=prompt_tokens,
            generated_tokens=len(new),
            finish_reason=finish,
            budget=budget,
            history_turns=history_turns,
            token_ids=new,
        )
        if finish == "length":
            generation.notes.append(cut_note(options.max_new_tokens))
        return generation

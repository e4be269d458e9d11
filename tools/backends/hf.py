"""What every transformers-based backend shares: loading, moving inputs, generating, counting."""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from ..errors import InvalidRequest, ModelNotFound, OutOfMemory
from ..options import GenerationOptions
from .base import Backend, Generation, Stopwatch

log = logging.getLogger("vlm_agent")

DTYPES = ("auto", "bfloat16", "float16", "float32")

LOCAL_COPY_HINT = (
    "download it once (for example `hf download {id} --local-dir ./{name}`) and pass that directory "
    "with --model or VLM_AGENT_MODEL"
)


def model_not_found(model_id: str) -> ModelNotFound:
    name = model_id.rstrip("/").rsplit("/", 1)[-1] or "model"
    return ModelNotFound(
        f"Model '{model_id}' was not found locally and could not be downloaded; "
        + LOCAL_COPY_HINT.format(id=model_id, name=name)
        + "."
    )


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise InvalidRequest(f"Unknown dtype '{name}'; use one of {', '.join(DTYPES)}.")
    return "auto" if name == "auto" else getattr(torch, name)


class HFBackend(Backend):
    """A backend around a transformers model and processor, resident for the process."""

    model_class: ClassVar[str] = "AutoModelForImageTextToText"

    def __init__(self, model_id: str, model: Any, processor: Any) -> None:
        super().__init__(model_id)
        self.model = model
        self.processor = processor
        self.load_s: float = 0.0

    @classmethod
    def load(cls, model_id: str, *, dtype: str = "auto", device_map: str | None = "auto") -> HFBackend:
        import transformers

        started = time.perf_counter()
        model_cls = getattr(transformers, cls.model_class)
        try:
            processor = transformers.AutoProcessor.from_pretrained(model_id)
            model = model_cls.from_pretrained(model_id, dtype=torch_dtype(dtype), device_map=device_map)
        except OSError as exc:
            log.debug("loading %s failed: %s", model_id, exc)
            raise model_not_found(model_id) from None
        backend = cls(model_id, model.eval(), processor)
        backend.load_s = round(time.perf_counter() - started, 3)
        return backend

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def max_positions(self) -> int | None:
        config = self.model.config.get_text_config()
        return getattr(config, "max_position_embeddings", None)

    def stop_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def generate(
        self,
        inputs: Any,
        options: GenerationOptions,
        *,
        budget: int | None,
        watch: Stopwatch,
        history_turns: int = 0,
    ) -> Generation:
        """Run ``generate`` on processor output and account for every token."""
        import torch

        input_ids = inputs["input_ids"]
        prompt_tokens = int(input_ids.shape[1])
        image_tokens = int((input_ids == self.image_token_id).sum())
        limit = self.max_positions
        if limit is not None and prompt_tokens + options.max_new_tokens > limit:
            raise InvalidRequest(
                f"The prompt is {prompt_tokens} tokens ({image_tokens} of them image tokens) and "
                f"{options.max_new_tokens} more were asked for, past this model's {limit}; use fewer "
                "images, a lower budget, a shorter history or a smaller max_new_tokens."
            )
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        preprocess_ms = watch.lap()
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **options.generate_kwargs())
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfMemory(
                "The model ran out of device memory on this request; try a lower budget, fewer images "
                "or a smaller max_new_tokens."
            ) from None
        generate_ms = watch.lap()
        new = output[0, prompt_tokens:].tolist()
        stop = self.stop_token_ids()
        finish = "stop" if new and new[-1] in stop else "length"
        text = self.processor.decode(new, skip_special_tokens=True).strip()
        generation = Generation(
            text=text,
            image_tokens=image_tokens,
            prompt_tokens=prompt_tokens,
            generated_tokens=len(new),
            finish_reason=finish,
            budget=budget,
            history_turns=history_turns,
        )
        generation.timings.preprocess_ms = preprocess_ms
        generation.timings.generate_ms = generate_ms
        generation.timings.total_ms = watch.total()
        if finish == "length":
            generation.notes.append(f"stopped at max_new_tokens={options.max_new_tokens}; the answer may be cut")
        return generation

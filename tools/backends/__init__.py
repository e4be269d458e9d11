"""Backends: one module per model family, chosen from the checkpoint's config."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import ModelNotFound, Unsupported
from ..hub import check_reachable
from .base import Backend, Generation, Timings, Turn
from .blip2 import Blip2Backend
from .gemma4 import Gemma4Backend
from .hf import HFBackend, model_not_found
from .openai import ApiSettings, OpenAIBackend
from .paligemma import PaliGemmaBackend

log = logging.getLogger("vlm_agent")

DEFAULT_MODEL = "google/gemma-4-E2B-it"
#: ``--model none``: no vision-language model, for a server that only reads text offline
NO_MODEL = "none"

#: config ``model_type`` -> backend class
FAMILIES: dict[str, type[HFBackend]] = {
    "gemma4": Gemma4Backend,
    "paligemma": PaliGemmaBackend,
    "blip-2": Blip2Backend,
}

__all__ = [
    "ApiSettings", "Backend", "DEFAULT_MODEL", "FAMILIES", "Generation", "NO_MODEL", "OpenAIBackend", "Timings",
    "Turn", "detect_family", "load_backend",
]


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith((".", "/", "~")) or Path(model_id).expanduser().exists()


def detect_family(model_id: str) -> str:
    """The checkpoint's ``model_type``, read from its config (never guessed from its name)."""
    from transformers import AutoConfig

    if _looks_like_path(model_id) and not Path(model_id).expanduser().is_dir():
        raise ModelNotFound(
            f"No model directory at '{model_id}'; pass a directory holding config.json and the weights, "
            "or a hub id such as google/gemma-4-E2B-it."
        )
    if not _looks_like_path(model_id):
        check_reachable(model_id)
    try:
        config = AutoConfig.from_pretrained(str(Path(model_id).expanduser()) if _looks_like_path(model_id) else model_id)
    except (OSError, ValueError) as exc:
        log.debug("reading the config of %s failed: %s", model_id, exc)
        raise model_not_found(model_id) from None
    return str(config.model_type)


def load_backend(
    model_id: str = DEFAULT_MODEL,
    *,
    dtype: str = "auto",
    device_map: str | None = "auto",
    quantize: str | None = None,
    api: ApiSettings | None = None,
    compile: bool = False,
) -> Backend:
    """Load ``model_id`` (hub id or local directory) once, with the backend of its family.

    ``quantize`` ("4bit" or "8bit") loads the weights through bitsandbytes, on a CUDA GPU only;
    ``compile`` decodes on a static KV cache with a compiled step (Gemma 4, CUDA GPU only).
    With ``api``, nothing is loaded here: the model runs on that OpenAI-compatible engine, and
    ``model_id``, ``dtype``, ``quantize`` and ``compile`` are the engine's business.
    """
    if api is not None:
        return OpenAIBackend.connect(api)
    if model_id == NO_MODEL:
        raise Unsupported(
            "No vision-language model is loaded (--model none); only ocr with engine 'rapidocr' works "
            "here: start with a model to describe, detect or read with one."
        )
    family = detect_family(model_id)
    try:
        backend_cls = FAMILIES[family]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise Unsupported(f"Model type '{family}' is not supported; vlm-agent runs: {known}.") from None
    if _looks_like_path(model_id):
        model_id = str(Path(model_id).expanduser())
    log.info("loading %s (%s)", model_id, family)
    started = time.perf_counter()
    backend = backend_cls.load(model_id, dtype=dtype, device_map=device_map, quantize=quantize, compile=compile)
    log.info("loaded %s on %s (%s) in %.1f s", model_id, backend.device, backend.dtype, time.perf_counter() - started)
    return backend

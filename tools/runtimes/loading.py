"""How a local model is loaded: its dtype, 4/8-bit quantization and compiled decoding, each
checked before any weights are read, and the refusal for a model found nowhere."""

from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import InvalidRequest, ModelNotFound, Unsupported
from . import accel

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZE = ("4bit", "8bit")

LOCAL_COPY_HINT = (
    "download it once (for example `hf download {id} --local-dir ./{name}`) and pass that directory "
    "as {{param}} (or VLM_AGENT_MODEL)"
)


def model_not_found(model_id: str) -> ModelNotFound:
    name = model_id.rstrip("/").rsplit("/", 1)[-1] or "model"
    return ModelNotFound(
        f"Model '{model_id}' was not found locally and could not be downloaded; "
        + LOCAL_COPY_HINT.format(id=model_id, name=name)
        + ".",
        param="model",
    )


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise InvalidRequest(f"Unknown dtype '{name}'; use one of {', '.join(DTYPES)}.", param="dtype")
    return "auto" if name == "auto" else getattr(torch, name)


def quantization_config(quantize: str | None, dtype: str) -> Any:
    """A bitsandbytes config for ``4bit`` / ``8bit``, None for full weights; checked before any loading."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE:
        raise InvalidRequest(f"Unknown quantization '{quantize}'; use one of {', '.join(QUANTIZE)}.", param="quantize")
    import torch

    # bitsandbytes' kernels are CUDA ones: on a CPU the load would fail deep inside transformers.
    if not torch.cuda.is_available():
        raise Unsupported(
            f"{quantize} loading needs a CUDA GPU and none is available here; load without {{param}}.", param="quantize"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Unsupported(
            f"{quantize} loading needs the bitsandbytes package; install it with `pip install bitsandbytes`."
        )
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if dtype in ("auto", "float32") else torch_dtype(dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def check_compile(compiles: bool, compile: bool) -> None:
    """``compile`` needs a runtime that implements it (``compiles``) and a CUDA GPU; checked before any loading."""
    if not compile:
        return
    if not compiles:
        raise Unsupported("Compiled decoding ({param}) is implemented for Gemma 4 only; load this model without it.", param="compile")
    if not accel.cuda_available():
        raise Unsupported("Compiled decoding ({param}) needs a CUDA GPU and none is available here; load without it.", param="compile")

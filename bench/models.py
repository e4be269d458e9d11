"""The models benchmarks run: the tiny test checkpoint, or random-weight Gemma 4 at real size.

Random weights run at the speed of trained ones; only the answers are gibberish. The real-size
configurations follow the published dimensions (FACTS.md); what the published figures leave
open (the attention heads, the 5:1 sliding/global pattern, E2B's double-wide MLP in its
KV-sharing layers) is chosen so that the parameter counts come out at the published totals.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tools.runtimes.accel import head_dims
from tools.families.gemma4 import Gemma4, Gemma4Runtime
from tools.model import Model, load_model
from tools.tiny import build_tiny
from tools.tiny.gemma4 import gemma4_model, gemma4_processor

REAL_VOCAB = 262_144
_REAL_TEXT = {
    "head_dim": 256, "global_head_dim": 512, "sliding_window": 512, "hidden_size_per_layer_input": 256,
    "num_attention_heads": 8, "max_position_embeddings": 131_072,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "e2b": {
        **_REAL_TEXT, "num_hidden_layers": 35, "hidden_size": 1536, "intermediate_size": 6144,
        "num_key_value_heads": 1, "num_kv_shared_layers": 20, "use_double_wide_mlp": True,
    },
    "e4b": {
        **_REAL_TEXT, "num_hidden_layers": 42, "hidden_size": 2560, "intermediate_size": 10240,
        "num_key_value_heads": 2, "num_kv_shared_layers": 18,
    },
}

#: E2B reduced for a CPU: every width, head dim, the sliding/global pattern and KV sharing kept, few layers
#: (the first period of five sliding layers and a global one with their own KV, then one sliding and one
#: global layer reading theirs, as E2B's last 20 layers do), a 2-layer vision tower of E2B's width, and a
#: smaller vocabulary (the output layer alone would be most of a CPU's decoding time).
REDUCED: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "e2b-mini": (
        {
            **CONFIGS["e2b"], "num_hidden_layers": 8, "num_kv_shared_layers": 2,
            "layer_types": ["sliding_attention"] * 5 + ["full_attention", "sliding_attention", "full_attention"],
        },
        {"num_hidden_layers": 2},
        32_768,
    ),
}


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build(config: str, device: str, workdir: Path) -> Model:
    """The model to benchmark: loaded through the production path for tiny, built in place at real size."""
    if config == "tiny":
        model = load_model(str(build_tiny(workdir / "tiny", "gemma4")), dtype="float32", device_map=device)
        assert isinstance(model.runtime, Gemma4Runtime)
        return model
    processor, ids = gemma4_processor()
    text, vision, vocab = REDUCED[config] if config in REDUCED else (CONFIGS[config], {}, REAL_VOCAB)
    # Built on the device in bf16: a real-size model initialised in float32 on a CPU takes minutes.
    with torch.device(device), default_dtype(torch.bfloat16):
        model = gemma4_model(processor, ids, text, vision, vocab_size=vocab)
    model.set_attn_implementation("sdpa")
    return Model(Gemma4.for_config(model.config), Gemma4Runtime(f"random-{config}", model, processor))


def describe_model(resident: Model) -> dict[str, Any]:
    backend = resident.runtime
    assert isinstance(backend, Gemma4Runtime)
    model = backend.model
    text = model.config.get_text_config()
    vision = model.config.vision_config
    return {
        "model": backend.model_id,
        "parameters": sum(p.numel() for p in model.parameters()),
        "per_layer_embedding_parameters": model.model.language_model.embed_tokens_per_layer.weight.numel(),
        "dtype": backend.dtype,
        "device": str(model.device),
        "attention": model.config._attn_implementation,
        "text": {k: getattr(text, k) for k in (
            "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "num_kv_shared_layers", "sliding_window", "vocab_size",
        ) if hasattr(text, k)},
        "head_dims": head_dims(text),
        "vision": {k: getattr(vision, k) for k in ("num_hidden_layers", "hidden_size", "patch_size")},
    }

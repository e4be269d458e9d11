"""The GPU path: SDPA attention on fused kernels, compiled decoding on a static KV cache, warm-up at load.

Written for CUDA and exercised here on a CPU only: on a CPU, transformers never compiles and
the probes below report nothing, so what the tests check is that the static-cache path gives
the same tokens as the dynamic one. docs/performance.md says how to measure the rest on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("vlm_agent")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def load_kwargs() -> dict[str, Any]:
    """from_pretrained arguments for the fast path: SDPA on CUDA (transformers' default elsewhere)."""
    return {"attn_implementation": "sdpa"} if cuda_available() else {}


def compile_config() -> Any:
    """Compile the decoding step with CUDA graphs; prefill stays eager, as its shapes change every call."""
    from transformers import CompileConfig

    return CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")


def head_dims(text_config: Any) -> list[int]:
    """Every attention head width of a language model (Gemma 4: 256 on sliding layers, 512 on global ones)."""
    layers = range(getattr(text_config, "num_hidden_layers", 0) or 0)
    per_layer = getattr(text_config, "per_layer_config", None)
    # Where widths vary by layer, transformers refuses to answer for the model as a whole.
    try:
        dims = {per_layer[i].head_dim for i in layers} if per_layer is not None and layers else {text_config.head_dim}
    except AttributeError:  # OPT, T5: no head_dim of their own
        dims = {text_config.hidden_size // text_config.num_attention_heads}
    return sorted(dim for dim in dims if dim)


def fused_attention_kernels(head_dims: Sequence[int], dtype: Any) -> dict[int, list[str]]:
    """For each head dimension, the fused SDPA kernels that accept it with a mask, as the model calls them.

    SDPA falls back to its slow math kernel without a word when no fused kernel fits. Gemma 4's
    global layers have 512-wide heads, past what flash attention takes, so what matters is that
    another fused kernel (memory-efficient, cuDNN) accepts them; SDPA's dispatcher then picks it.
    transformers already repeats key/value heads itself above 256 wide rather than asking SDPA
    for grouped-query attention, which only the math kernel would serve. Empty on a CPU.
    """
    if not cuda_available():
        return {}
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    kernels = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    found: dict[int, list[str]] = {}
    for dim in sorted(set(head_dims)):
        # prefill-like and decode-like shapes, with the boolean mask transformers passes
        shapes = [(64, 64), (1, 65)]
        found[dim] = []
        for name, kernel in kernels.items():
            try:
                with sdpa_kernel([kernel]):
                    for q_len, kv_len in shapes:
                        q = torch.randn(1, 8, q_len, dim, device="cuda", dtype=dtype)
                        kv = torch.randn(1, 8, kv_len, dim, device="cuda", dtype=dtype)
                        mask = torch.ones(q_len, kv_len, device="cuda", dtype=torch.bool).tril(kv_len - q_len)
                        scaled_dot_product_attention(q, kv, kv, attn_mask=mask[None, None])
                found[dim].append(name)
            except RuntimeError:
                continue
        if not found[dim]:
            log.warning("no fused attention kernel takes head dim %d in %s: those layers run on the math kernel", dim, dtype)
    return found

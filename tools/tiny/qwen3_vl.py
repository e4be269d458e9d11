"""A tiny random-weight Qwen3-VL (``qwen3_vl``) for offline smoke runs and tests.

The real input geometry (16 px patches merged 2 x 2, so one image token per 32 x 32 pixels;
the checkpoints' own 64 to 16384 image-token range), the real processor classes
(``Qwen3VLProcessor`` around ``Qwen2VLImageProcessor``) and a byte-level BPE ``Qwen2Tokenizer``
holding Qwen's special tokens, saved with ``save_pretrained`` so it loads like a real model.
Only the widths and depths are tiny.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import ENGINE_HEAD_DIM, byte_level_vocab, chat_template, save, start

#: Qwen's control tokens, in the order the real vocabulary has them after its text tokens
QWEN3_VL_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
#: what the real checkpoints' preprocessor_config.json says
PATCH = 16
MERGE = 2
MIN_PIXELS = 64 * (PATCH * MERGE) ** 2
MAX_PIXELS = 16384 * (PATCH * MERGE) ** 2


def qwen3_vl_chat_template() -> str:
    return chat_template("qwen3_vl")


def qwen3_vl_processor() -> tuple[Any, dict[str, int]]:
    """A Qwen3-VL processor around a small byte-level tokenizer, with the ids of its special tokens."""
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    vocab, merges = byte_level_vocab(QWEN3_VL_SPECIALS)
    # As the real tokenizer: no <bos>, turns end at <|im_end|>, <|endoftext|> pads.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
    )
    # Control tokens must stay atomic, or the template's markers would be split into bytes.
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN3_VL_SPECIALS[1:]})
    geometry = {"patch_size": PATCH, "merge_size": MERGE, "temporal_patch_size": 2}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
            image_mean=[0.5] * 3, image_std=[0.5] * 3, **geometry,
        ),
        video_processor=Qwen3VLVideoProcessor(**geometry),
        tokenizer=tokenizer,
        chat_template=qwen3_vl_chat_template(),
    )
    return processor, {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN3_VL_SPECIALS}


def build_qwen3_vl(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A Qwen3-VL with a 2-layer language model and a 1-block vision tower, under 1 MB."""
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out = start(out_dir, seed)
    processor, ids = qwen3_vl_processor()
    head_dim = ENGINE_HEAD_DIM
    text = {
        # Sized after the processor added its tokens, so every id has an embedding row.
        "vocab_size": len(processor.tokenizer), "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": head_dim,
        "max_position_embeddings": 8192, "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        # Multimodal RoPE: the (time, height, width) sections share out half the head dim, as
        # the real ones' [24, 20, 20] do for 128 (engines check the sum).
        "rope_parameters": {
            "rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True,
        },
    }
    vision = {
        "depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
        "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2,
        "deepstack_visual_indexes": [0],
    }
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    stop = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config = GenerationConfig(eos_token_id=stop, pad_token_id=ids["<|endoftext|>"], do_sample=False)
    return save(model, processor, out)

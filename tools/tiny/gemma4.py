"""A tiny random-weight Gemma 4: the real processor classes around a byte-fallback Gemma tokenizer
holding every special token of the family, the real 280-token image input, head sizes serving
engines take. Only the widths and depths are tiny."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import ENGINE_HEAD_DIM, byte_fallback_vocab, chat_template, save, start

GEMMA4_SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>",
    "<|video|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
    "<tool_response|>", '<|"|>', "<|think|>", "<|channel>", "<channel|>",
]


def gemma4_chat_template() -> str:
    return chat_template("gemma4")


def gemma4_processor() -> tuple[Any, dict[str, int]]:
    """A Gemma 4 processor around a small byte-fallback tokenizer, with the ids of its special tokens."""
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4ImageProcessor,
        Gemma4Processor,
        Gemma4VideoProcessor,
        GemmaTokenizer,
    )

    vocab, merges = byte_fallback_vocab(GEMMA4_SPECIALS)
    named = {
        "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
        "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
    }
    tok = GemmaTokenizer(vocab=vocab, merges=merges, extra_special_tokens=named)
    # Turn and tool markers must stay atomic, or templates would split them into bytes.
    others = [t for t in GEMMA4_SPECIALS[5:] if t not in named.values()]
    tok.add_special_tokens({"additional_special_tokens": others}, replace_extra_special_tokens=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in GEMMA4_SPECIALS}
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(max_soft_tokens=280, pooling_kernel_size=_POOL, patch_size=16),
        video_processor=Gemma4VideoProcessor(max_soft_tokens=70, pooling_kernel_size=_POOL),
        tokenizer=tok,
        chat_template=gemma4_chat_template(),
        image_seq_length=280,
    )
    return processor, ids


def gemma4_model(
    processor: Any, ids: dict[str, int], text: dict[str, Any], vision: dict[str, Any], vocab_size: int | None = None
) -> Any:
    """A random-weight Gemma 4 of the given text and vision dimensions around ``processor``'s token ids.

    ``vocab_size`` defaults to the tokenizer's; a larger one (the real 262144) only makes the
    embedding and output layers real-sized: ids past the tokenizer decode to nothing.
    """
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig
    from transformers import GenerationConfig

    # Sized after the processor added its tokens, so every id has an embedding row.
    vocab_size = vocab_size or len(processor.tokenizer)
    stop = [ids["<eos>"], ids["<turn|>"]]
    text_config = Gemma4TextConfig(
        vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size,
        pad_token_id=ids["<pad>"], eos_token_id=stop, bos_token_id=ids["<bos>"], final_logit_softcapping=30.0,
        **text,
    )
    config = Gemma4Config(
        text_config=text_config, vision_config=Gemma4VisionConfig(pooling_kernel_size=_POOL, **vision),
        audio_config=None,
        boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"], image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"], boa_token_id=ids["<|audio>"], eoa_token_index=ids["<audio|>"],
        audio_token_id=ids["<|audio|>"],
    )
    model = Gemma4ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"], pad_token_id=ids["<pad>"], eos_token_id=stop, do_sample=False,
    )
    return model


_POOL = 3
TINY_GEMMA4_TEXT = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": ENGINE_HEAD_DIM, "global_head_dim": ENGINE_HEAD_DIM,
    "hidden_size_per_layer_input": 8,
    "sliding_window": 32, "max_position_embeddings": 8192, "layer_types": ["sliding_attention", "full_attention"],
}
# The real position table (10240, the default): long thin images at budget 1120 need it.
# default_output_length is the real checkpoints' default budget (280), which vLLM reads to size
# its image inputs; the vision tower's head size is not an engine attention kernel's, so 16 stays.
TINY_GEMMA4_VISION = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 2, "head_dim": 16, "patch_size": 16, "default_output_length": 280,
}


def build_gemma4(out_dir: str | Path, *, seed: int = 0) -> Path:
    out = start(out_dir, seed)
    processor, ids = gemma4_processor()
    model = gemma4_model(processor, ids, TINY_GEMMA4_TEXT, TINY_GEMMA4_VISION)
    return save(model, processor, out)

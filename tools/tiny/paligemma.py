"""A tiny random-weight PaliGemma like mix-224: its input geometry and 256 image tokens, the
processor's <loc>/<seg> tokens, a byte-fallback Gemma tokenizer. Only the widths and depths are tiny."""

from __future__ import annotations

from pathlib import Path

from .common import IMAGE_SIZE, PATCH, byte_fallback_vocab, save, start


def build_paligemma(out_dir: str | Path, *, seed: int = 0) -> Path:
    """A PaliGemma like mix-224: 256 image tokens, the processor's <loc>/<seg> tokens, a Gemma tokenizer."""
    from transformers import (
        GemmaConfig,
        GemmaTokenizer,
        GenerationConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    out = start(out_dir, seed)
    vocab, merges = byte_fallback_vocab(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    pad, eos, bos = 0, 1, 2
    tokens = (IMAGE_SIZE // PATCH) ** 2
    image_processor = SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_seq_length=tokens,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3,
    )
    # The processor adds <image>, the 1024 <locNNNN> and the 128 <segNNN> tokens to the tokenizer.
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab_size = len(processor.tokenizer)
    text = GemmaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=8192,
        pad_token_id=pad, eos_token_id=eos, bos_token_id=bos,
    )
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False,
    )
    config = PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
        vocab_size=vocab_size, projection_dim=32, hidden_size=32,
    )
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, do_sample=False)
    return save(model, processor, out)

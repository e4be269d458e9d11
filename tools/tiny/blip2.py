"""Tiny random-weight BLIP-2s, with an OPT (decoder-only) or a Flan-T5 (encoder-decoder) language
model: the real input geometry and 32 query tokens; only the widths and depths are tiny."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import IMAGE_SIZE, PATCH, byte_level_vocab, save, start, unigram_vocab


def _build_blip2(out: Path, tokenizer: Any, text_config: Any, generation: dict[str, int]) -> Path:
    """BLIP-2 around a tokenizer and a language-model config: 32 query tokens, as the real ones."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        GenerationConfig,
    )

    queries = 32
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=queries,
    )
    # Sized after the processor added <image>, so every id has an embedding row.
    text_config.vocab_size = len(processor.tokenizer)
    vision = Blip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=len(processor.tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1, max_position_embeddings=64,
    )
    config = Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text_config, num_query_tokens=queries,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(do_sample=False, **generation)
    return save(model, processor, out)


def build_blip2(out_dir: str | Path, *, seed: int = 0) -> Path:
    """BLIP-2 with an OPT language model (like Salesforce/blip2-opt-2.7b) and a GPT-2-style tokenizer."""
    from transformers import GPT2Tokenizer, OPTConfig

    out = start(out_dir, seed)
    vocab, merges = byte_level_vocab(["<s>", "<pad>", "</s>", "<unk>"])
    pad, eos = 1, 2
    # OPT's own convention: </s> starts every prompt and ends every answer.
    tokenizer = GPT2Tokenizer(
        vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", unk_token="</s>", pad_token="<pad>",
        add_bos_token=True,
    )
    text = OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, word_embed_proj_dim=32,
        max_position_embeddings=2048, pad_token_id=pad, bos_token_id=eos, eos_token_id=eos,
    )
    return _build_blip2(out, tokenizer, text, {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": pad})


def build_blip2_t5(out_dir: str | Path, *, seed: int = 0) -> Path:
    """BLIP-2 with a Flan-T5 (encoder-decoder) language model and a unigram T5 tokenizer."""
    from transformers import T5Config, T5Tokenizer

    out = start(out_dir, seed)
    pad, eos = 0, 1
    tokenizer = T5Tokenizer(vocab=unigram_vocab(["<pad>", "</s>", "<unk>"]), extra_ids=0)
    text = T5Config(
        d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
    )
    return _build_blip2(out, tokenizer, text, {"eos_token_id": eos, "pad_token_id": pad, "decoder_start_token_id": pad})

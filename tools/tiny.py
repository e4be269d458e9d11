"""Tiny random-weight checkpoints for offline smoke runs and tests.

Real configs, real processor classes and a locally built tokenizer that holds every
special token of the family, saved with ``save_pretrained`` so they load back through
the production path (``from_pretrained`` on a local directory). Weights are random:
outputs are gibberish, but token counts, shapes and timings of the plumbing are real.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import InvalidRequest

FAMILIES = ("gemma4",)

# Byte-fallback vocab: every string is encodable, so prompts never hit <unk>.
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()[]{}_/*#@\n "
_MERGES = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("o", "n"), ("e", "r")]

GEMMA4_SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>", "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>",
    "<|video|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
    "<tool_response|>", '<|"|>', "<|think|>", "<|channel>", "<channel|>",
]


def byte_fallback_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A SentencePiece-style vocab: specials, the 256 ``<0xNN>`` bytes, then characters."""
    vocab: dict[str, int] = {}
    for token in specials:
        vocab.setdefault(token, len(vocab))
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    for ch in ["▁", *_CHARS]:
        vocab.setdefault(ch, len(vocab))
    for a, b in _MERGES:
        vocab.setdefault(a + b, len(vocab))
    return vocab, list(_MERGES)


def gemma4_chat_template() -> str:
    return resources.files("tools").joinpath("templates/gemma4.jinja").read_text(encoding="utf-8")


def build_gemma4(out_dir: str | Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import (
        Gemma4AudioFeatureExtractor,
        Gemma4Config,
        Gemma4ForConditionalGeneration,
        Gemma4ImageProcessor,
        Gemma4Processor,
        Gemma4TextConfig,
        Gemma4VideoProcessor,
        Gemma4VisionConfig,
        GemmaTokenizer,
        GenerationConfig,
    )

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

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

    pool = 3
    processor = Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(max_soft_tokens=280, pooling_kernel_size=pool, patch_size=16),
        video_processor=Gemma4VideoProcessor(max_soft_tokens=70, pooling_kernel_size=pool),
        tokenizer=tok,
        chat_template=gemma4_chat_template(),
        image_seq_length=280,
    )
    # Sized after the processor added its tokens, so every id has an embedding row.
    vocab_size = len(tok)
    stop = [ids["<eos>"], ids["<turn|>"]]
    text = Gemma4TextConfig(
        vocab_size=vocab_size, vocab_size_per_layer_input=vocab_size, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, global_head_dim=16, hidden_size_per_layer_input=8, sliding_window=32,
        max_position_embeddings=8192, layer_types=["sliding_attention", "full_attention"],
        pad_token_id=ids["<pad>"], eos_token_id=stop, bos_token_id=ids["<bos>"],
        final_logit_softcapping=30.0,
    )
    vision = Gemma4VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, patch_size=16, pooling_kernel_size=pool,
        position_embedding_size=256,
    )
    config = Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None,
        boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"], image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"], boa_token_id=ids["<|audio>"], eoa_token_index=ids["<audio|>"],
        audio_token_id=ids["<|audio|>"],
    )
    model = Gemma4ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<bos>"], pad_token_id=ids["<pad>"], eos_token_id=stop, do_sample=False,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


_BUILDERS = {"gemma4": build_gemma4}


def build_tiny(out_dir: str | Path, family: str = "gemma4", *, seed: int = 0) -> Path:
    """Build a tiny random-weight checkpoint of ``family`` in ``out_dir``."""
    try:
        builder = _BUILDERS[family]
    except KeyError:
        raise InvalidRequest(
            f"Unknown family '{family}'; choose one of: {', '.join(_BUILDERS)}."
        ) from None
    return builder(out_dir, seed=seed)

"""Tiny random-weight checkpoints for offline smoke runs and tests.

Real configs, real processor classes and a locally built tokenizer that holds every
special token of the family, saved with ``save_pretrained`` so they load back through
the production path (``from_pretrained`` on a local directory). Weights are random:
outputs are gibberish, but token counts, shapes and timings of the plumbing are real.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InvalidRequest

#: the key ``build_tiny`` adds to a checkpoint's config.json: the front ends tell a tiny model by it
TINY_MARKER = "vlm_agent_tiny"


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


def byte_level_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A GPT-2-style vocab: specials, then the 256 byte symbols, so every string is encodable."""
    from tokenizers import pre_tokenizers

    vocab: dict[str, int] = {}
    for token in specials:
        vocab.setdefault(token, len(vocab))
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("o", "n"), ("e", "r")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def unigram_vocab(specials: list[str]) -> list[tuple[str, float]]:
    """A SentencePiece-unigram vocab (Flan-T5's kind): specials, then characters, then a few words."""
    pieces = [(token, 0.0) for token in specials]
    pieces += [(ch, -3.0) for ch in ["▁", *_CHARS.replace(" ", "")]]
    pieces += [("▁" + a + b, -1.0) for a, b in _MERGES if a == "▁"]
    return pieces


def _start(out_dir: str | Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save(model: Any, processor: Any, out: Path) -> Path:
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def gemma4_chat_template() -> str:
    return resources.files("tools").joinpath("templates/gemma4.jinja").read_text(encoding="utf-8")


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
#: the smallest head size serving engines take: vLLM's CPU attention has kernels for 32, 64,
#: 80, ... 512 only, and a model with another size dies on its first request
ENGINE_HEAD_DIM = 32
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
    out = _start(out_dir, seed)
    processor, ids = gemma4_processor()
    model = gemma4_model(processor, ids, TINY_GEMMA4_TEXT, TINY_GEMMA4_VISION)
    return _save(model, processor, out)


# The real checkpoints' input geometry (224 px, 14 px patches), so image-token counts match
# mix-224 and blip2-*: only the widths and depths are tiny.
_IMAGE_SIZE = 224
_PATCH = 14


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

    out = _start(out_dir, seed)
    vocab, merges = byte_fallback_vocab(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    pad, eos, bos = 0, 1, 2
    tokens = (_IMAGE_SIZE // _PATCH) ** 2
    image_processor = SiglipImageProcessor(
        size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}, image_seq_length=tokens,
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
        image_size=_IMAGE_SIZE, patch_size=_PATCH, vision_use_head=False,
    )
    config = PaliGemmaConfig(
        vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
        vocab_size=vocab_size, projection_dim=32, hidden_size=32,
    )
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, do_sample=False)
    return _save(model, processor, out)


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
        image_processor=BlipImageProcessor(size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=queries,
    )
    # Sized after the processor added <image>, so every id has an embedding row.
    text_config.vocab_size = len(processor.tokenizer)
    vision = Blip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=_IMAGE_SIZE, patch_size=_PATCH,
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
    return _save(model, processor, out)


def build_blip2(out_dir: str | Path, *, seed: int = 0) -> Path:
    """BLIP-2 with an OPT language model (like Salesforce/blip2-opt-2.7b) and a GPT-2-style tokenizer."""
    from transformers import GPT2Tokenizer, OPTConfig

    out = _start(out_dir, seed)
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

    out = _start(out_dir, seed)
    pad, eos = 0, 1
    tokenizer = T5Tokenizer(vocab=unigram_vocab(["<pad>", "</s>", "<unk>"]), extra_ids=0)
    text = T5Config(
        d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad,
    )
    return _build_blip2(out, tokenizer, text, {"eos_token_id": eos, "pad_token_id": pad, "decoder_start_token_id": pad})




def build_tiny(out_dir: str | Path, family: str = "gemma4", *, seed: int = 0) -> Path:
    """Build a tiny random-weight checkpoint of ``family`` in ``out_dir``."""
    # The builders are registered with the families (tools.families.TINY), one entry each.
    from .families import TINY

    try:
        builder = TINY[family]
    except KeyError:
        raise InvalidRequest(f"Unknown family '{family}'; choose one of: {', '.join(TINY)}.", param="family") from None
    out = Path(builder(out_dir, seed=seed))
    config = out / "config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data[TINY_MARKER] = True
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def is_tiny(model: str) -> bool:
    """Whether ``model`` is a local folder holding a checkpoint ``build_tiny`` wrote (config.json only is read)."""
    try:
        data = json.loads((Path(model).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(TINY_MARKER) is True

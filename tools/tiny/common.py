"""What every tiny builder shares: small vocabularies of each tokenizer kind, the seeded start and
the save, the chat templates shipped in ``templates/``, and the sizes the real checkpoints fix."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

# Byte-fallback vocab: every string is encodable, so prompts never hit <unk>.
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()[]{}_/*#@\n "
_MERGES = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("o", "n"), ("e", "r")]

#: the smallest head size serving engines take: vLLM's CPU attention has kernels for 32, 64,
#: 80, ... 512 only, and a model with another size dies on its first request
ENGINE_HEAD_DIM = 32

# The real checkpoints' input geometry (224 px, 14 px patches), so image-token counts match
# mix-224 and blip2-*: only the widths and depths are tiny.
IMAGE_SIZE = 224
PATCH = 14


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


def start(out_dir: str | Path, seed: int) -> Path:
    """Seed torch (the random weights follow from it) and make the output folder."""
    import torch

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save(model: Any, processor: Any, out: Path) -> Path:
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def chat_template(name: str) -> str:
    """The chat template ``templates/<name>.jinja`` shipped with this package."""
    return resources.files("tools.tiny").joinpath(f"templates/{name}.jinja").read_text(encoding="utf-8")

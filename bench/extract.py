"""``python -m bench.extract``: what decoding under a schema costs, per token and per schema.

On the tiny Gemma 4 (built here, random weights), through the local runtime's own ``generate``:

- plain: N new tokens forced with ``min_new_tokens``, no processor;
- ours: the same prompt under a schema that cannot close before N tokens (a string with
  ``minLength`` N), with our llguidance logits processor (``tools.extract.processor``);
  the per-token overhead is (ours - plain) / N, and each processor call is timed on its own.

llguidance ships no transformers logits processor of its own (``llguidance.hf`` builds the
tokenizer only, and transformers has no llguidance integration), so the library's own path
that can be compared is its mask kernel: ``llguidance.torch.apply_token_bitmask_inplace``
(a ``torch.compile`` kernel) against our plain-torch bit unpacking, on the same bitmask.

On a synthetic 262,144-token byte-fallback tokenizer (Gemma 4's vocabulary size; no model):
building llguidance's tokenizer, compiling a receipt schema cold and from the cache (by schema
hash), and each processor step over a valid receipt, token by token.

    python -m bench.extract                     # tokens 64 and 256, 3 interleaved repeats
    python -m bench.extract --tokens 64 --repeats 5 --markdown extract.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RECEIPT = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string", "maxLength": 40},
        "date": {"type": "string", "format": "date"},
        "total": {"type": "number", "minimum": 0, "maximum": 100000},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "items": {"type": "array", "maxItems": 5, "items": {
            "type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                             "price": {"type": "number", "minimum": 0}},
            "required": ["name", "price"]}},
    },
    "required": ["vendor", "date", "total", "currency", "items"],
}
RECEIPT_ANSWER = {"vendor": "Acme Market", "date": "2026-12-07", "total": 42.5, "currency": "EUR",
                  "items": [{"name": "bread", "price": 2.5}, {"name": "cheese", "price": 40}]}
BIG_VOCAB = 262_144


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class Timed:
    """A logits processor wrapped so that each of its calls is timed."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        started = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.calls.append(time.perf_counter() - started)
        return out


def tiny_runs(tokens: Sequence[int], repeats: int) -> dict[str, Any]:
    """Plain against constrained generation on the tiny Gemma 4, through the local runtime."""
    import torch
    from transformers import LogitsProcessorList

    from tools.extract import prepare
    from tools.model import load_model
    from tools.options import GenerationOptions
    from tools.tiny import build_tiny

    folder = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    model = load_model(str(build_tiny(folder / "gemma4", "gemma4")))
    runtime = model.runtime
    inputs = runtime.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Extract the fields as JSON."}]}],
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
    )
    out: dict[str, Any] = {"vocab": int(runtime.model.config.get_text_config().vocab_size)}
    started = time.perf_counter()
    grammars = runtime.grammars()
    out["tokenizer_build_ms"] = ms(time.perf_counter() - started)
    started = time.perf_counter()
    receipt = prepare(RECEIPT)
    out["receipt_checks_and_grammar_ms"] = ms(time.perf_counter() - started)
    started = time.perf_counter()
    prepare(RECEIPT)
    out["receipt_checks_and_grammar_cached_ms"] = ms(time.perf_counter() - started)
    started = time.perf_counter()
    grammars.template(receipt)
    out["receipt_matcher_compile_ms"] = ms(time.perf_counter() - started)
    started = time.perf_counter()
    grammars.constraint(receipt)
    out["receipt_matcher_from_cache_ms"] = ms(time.perf_counter() - started)

    def generate(processor: Any, count: int) -> tuple[float, int]:
        kwargs = GenerationOptions(max_new_tokens=count, min_new_tokens=count if processor is None else None)
        extra = {} if processor is None else {"logits_processor": LogitsProcessorList([processor])}
        started = time.perf_counter()
        with torch.inference_mode():
            output = runtime.model.generate(**inputs, **kwargs.generate_kwargs(), **extra)
        return time.perf_counter() - started, int(output.shape[1] - inputs["input_ids"].shape[1])

    generate(None, 4)  # warm: first-call allocations belong to neither side
    for count in tokens:
        forcing = prepare({"type": "object", "properties": {"s": {"type": "string", "minLength": 4 * count}},
                           "required": ["s"]})
        plain, ours, calls = [], [], []
        for _ in range(repeats):  # interleaved, so a busy machine slows both sides alike
            seconds, made = generate(None, count)
            assert made == count
            plain.append(seconds)
            timed = Timed(grammars.constraint(forcing))
            seconds, made = generate(timed, count)
            assert made == count, made
            ours.append(seconds)
            calls.append(statistics.median(timed.calls))
        plain_s, ours_s = statistics.median(plain), statistics.median(ours)
        out[f"n{count}"] = {
            "plain_ms": ms(plain_s), "constrained_ms": ms(ours_s),
            "overhead_ms_per_token": round((ours_s - plain_s) / count * 1000, 3),
            "processor_call_median_ms": ms(statistics.median(calls)),
            "plain_runs_ms": [ms(s) for s in plain], "constrained_runs_ms": [ms(s) for s in ours],
        }
    timed = Timed(grammars.constraint(receipt))
    seconds, made = generate(timed, 400)
    out["receipt_end_to_end"] = {"tokens": made, "ms": ms(seconds), "processor_total_ms": ms(sum(timed.calls))}
    return out


def synthetic_tokenizer(size: int) -> Any:
    """A byte-fallback BPE tokenizer of ``size`` entries: specials, 256 byte pieces, random word pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>"]:
        vocab[token] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()[]{}_/*#@":
        vocab.setdefault(char, len(vocab))
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz" * 3 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:-\"{}[]"
    while len(vocab) < size:
        piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9)))
        vocab.setdefault(("▁" if rng.random() < 0.5 else "") + piece, len(vocab))
    model = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    model.normalizer = normalizers.Replace(" ", "▁")
    model.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def big_vocab(repeats: int) -> dict[str, Any]:
    """The grammar's costs at Gemma 4's vocabulary size, stepping a valid receipt token by token (no model)."""
    import torch

    from tools.extract import prepare
    from tools.extract.grammar import Grammars

    tokenizer = synthetic_tokenizer(BIG_VOCAB)
    out: dict[str, Any] = {"vocab": len(tokenizer)}
    started = time.perf_counter()
    grammars = Grammars(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    out["tokenizer_build_ms"] = ms(time.perf_counter() - started)
    receipt = prepare(RECEIPT)
    started = time.perf_counter()
    grammars.template(receipt)
    out["receipt_matcher_compile_ms"] = ms(time.perf_counter() - started)
    started = time.perf_counter()
    grammars.template(receipt)
    out["receipt_matcher_from_cache_ms"] = ms(time.perf_counter() - started)
    ids = tokenizer.encode(json.dumps(RECEIPT_ANSWER, separators=(",", ":")), add_special_tokens=False)
    ids.append(tokenizer.eos_token_id)
    logits = torch.zeros(1, len(tokenizer))
    passes = []
    for _ in range(repeats):
        constraint = grammars.constraint(receipt)
        sequence = torch.tensor([[tokenizer.bos_token_id]])
        times = []
        for token in ids:
            scores = logits.clone()
            started = time.perf_counter()
            masked = constraint(sequence, scores)
            times.append(time.perf_counter() - started)
            assert torch.isfinite(masked[0, token]), f"the grammar refused its own answer's token {token}"
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
        passes.append(times)
    per_step = [min(run[i] for run in passes) for i in range(len(ids))]
    out["steps"] = len(ids)
    out["processor_call_ms"] = {
        "median": ms(statistics.median(per_step)),
        "p90": ms(sorted(per_step)[int(0.9 * len(per_step))]),
        "first_step_each_pass": [ms(run[0]) for run in passes],
    }
    return out


def mask_kernels(repeats: int) -> dict[str, Any]:
    """Our plain-torch bit unpacking against llguidance's own torch kernel, on the same bitmask."""
    import torch

    from tools.extract.processor import apply_bitmask_

    out: dict[str, Any] = {}
    try:
        import llguidance.torch as llt
    except Exception as exc:  # noqa: BLE001 (a missing compiler or backend: reported, not fatal)
        return {"llguidance_torch": f"not importable: {type(exc).__name__}: {str(exc)[:120]}"}
    for vocab in (372, BIG_VOCAB):
        words = (vocab + 31) // 32
        generator = torch.Generator().manual_seed(0)
        bitmask = torch.randint(-(2**31), 2**31 - 1, (1, words), dtype=torch.int32, generator=generator)
        row: dict[str, Any] = {}
        for name, kernel in (("ours", apply_bitmask_), ("llguidance.torch", llt.apply_token_bitmask_inplace)):
            first = None
            times = []
            try:
                for n in range(repeats * 10 + 1):
                    scores = torch.zeros(1, vocab)
                    started = time.perf_counter()
                    kernel(scores, bitmask)
                    elapsed = time.perf_counter() - started
                    if n == 0:
                        first = elapsed
                    else:
                        times.append(elapsed)
            except Exception as exc:  # noqa: BLE001 (torch.compile needs a C++ compiler on a CPU)
                row[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                continue
            row[name] = {"median_ms": ms(statistics.median(times)), "first_call_ms": ms(first or 0.0)}
        out[f"vocab_{vocab}"] = row
    return out


def markdown(results: dict[str, Any]) -> str:
    tiny = results["tiny"]
    rows = [
        "| what | measured |",
        "|---|---|",
        f"| llguidance tokenizer, tiny Gemma 4 ({tiny['vocab']} tokens) | {tiny['tokenizer_build_ms']} ms |",
        f"| receipt schema: checks + grammar, first / cached | {tiny['receipt_checks_and_grammar_ms']} / "
        f"{tiny['receipt_checks_and_grammar_cached_ms']} ms |",
        f"| receipt matcher: compile / copy from the cache | {tiny['receipt_matcher_compile_ms']} / "
        f"{tiny['receipt_matcher_from_cache_ms']} ms |",
    ]
    for key, value in tiny.items():
        if key.startswith("n") and isinstance(value, dict):
            count = key[1:]
            rows.append(f"| {count} tokens: plain / constrained generate (medians) | {value['plain_ms']:.0f} / "
                        f"{value['constrained_ms']:.0f} ms |")
            rows.append(f"| {count} tokens: overhead per token / processor call (median) | "
                        f"{value['overhead_ms_per_token']} / {value['processor_call_median_ms']} ms |")
    end = tiny["receipt_end_to_end"]
    rows.append(f"| receipt end to end | {end['tokens']} tokens, {end['ms']:.0f} ms, processor {end['processor_total_ms']} ms |")
    big = results.get("big")
    if big:
        rows += [
            f"| {big['vocab']:,}-token tokenizer: build | {big['tokenizer_build_ms']:.0f} ms |",
            f"| {big['vocab']:,} tokens: receipt matcher compile / from the cache | {big['receipt_matcher_compile_ms']} / "
            f"{big['receipt_matcher_from_cache_ms']} ms |",
            f"| {big['vocab']:,} tokens: processor call over a {big['steps']}-token receipt, median / p90 | "
            f"{big['processor_call_ms']['median']} / {big['processor_call_ms']['p90']} ms |",
        ]
    for vocab, row in results.get("kernels", {}).items():
        if isinstance(row, dict):
            cells = [f"{name} {v['median_ms']} ms (first call {v['first_call_ms']:.0f} ms)" if isinstance(v, dict)
                     else f"{name} {v}" for name, v in row.items()]
            rows.append(f"| mask kernel, {vocab.replace('vocab_', '')} tokens | {'; '.join(cells)} |")
        else:
            rows.append(f"| mask kernel | {row} |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.extract", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256], help="forced answer lengths")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats, medians reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-big-vocab", action="store_true", help="skip the 262,144-token tokenizer (seconds to build)")
    parser.add_argument("--no-kernels", action="store_true", help="skip llguidance.torch's compiled kernel")
    parser.add_argument("--out", default="bench-extract.json")
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"tiny": tiny_runs(args.tokens, args.repeats)}
    if not args.no_big_vocab:
        results["big"] = big_vocab(args.repeats)
    if not args.no_kernels:
        results["kernels"] = mask_kernels(args.repeats)
    Path(args.out).write_text(json.dumps(results, indent=1))
    table = markdown(results)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

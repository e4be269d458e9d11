"""Measuring one call: time to first token, decode rate, peak memory; and the memory-bandwidth ceiling."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

#: peak memory bandwidth from the vendors' data sheets, bytes/s, by a piece of the device name (first match wins)
GPU_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
    ("A10G", 0.6e12),
    ("RTX 4090", 1.008e12),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    total_ms: float
    ttft_ms: float
    #: tokens per second after the first one; None for a one-token answer
    decode_tps: float | None
    peak_mb: float


class FirstForward:
    """When the model's first forward pass (the prefill) of a call has finished."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.at: float | None = None
        self._handle: Any = None

    def __enter__(self) -> FirstForward:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def _hook(self, *_: Any) -> None:
        if self.at is None:
            sync(self.device)
            self.at = time.perf_counter()
            # Gone before decoding starts: a hook inside a compiled step would break its graph.
            self._handle.remove()

    def __exit__(self, *_: Any) -> None:
        self._handle.remove()


class PeakMemory:
    """Peak memory above the starting point during a block: CUDA allocations, or the process's RSS on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = rss()
            self._peak = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, rss())

    def __exit__(self, *_: Any) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, rss()) - self._start


def rss() -> int:
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(model: Any, tokens: int, call: Callable[[], Any]) -> tuple[Timing, Any]:
    """Run ``call`` (one generation of exactly ``tokens`` new tokens) and measure it."""
    device = model.device
    sync(device)
    with FirstForward(model) as first, PeakMemory(device) as memory:
        started = time.perf_counter()
        result = call()
        sync(device)
        ended = time.perf_counter()
    prefilled = first.at if first.at is not None else ended
    decode = (tokens - 1) / (ended - prefilled) if tokens > 1 and ended > prefilled else None
    return Timing(
        total_ms=(ended - started) * 1000,
        ttft_ms=(prefilled - started) * 1000,
        decode_tps=decode,
        peak_mb=memory.peak_bytes / 2**20,
    ), result


def median_timing(timings: list[Timing]) -> Timing:
    """Each field's median over repeats."""
    fields = asdict(timings[0]).keys()
    values = {name: [getattr(t, name) for t in timings] for name in fields}
    return Timing(**{name: statistics.median(v) if None not in v else None for name, v in values.items()})


def decode_bytes_per_token(model: Any) -> int:
    """Bytes of weights one decoding step reads: the language model's, without the per-layer embedding table
    (one row per token is gathered) and with the output projection (the whole vocabulary every token)."""
    language = model.model.language_model
    total = 0
    for name, parameter in language.named_parameters():
        if name.startswith("embed_tokens_per_layer"):
            continue
        total += parameter.numel() * parameter.element_size()
    head = model.lm_head.weight
    if head.data_ptr() != language.embed_tokens.weight.data_ptr():
        # untied: the input embedding is gathered row by row, the head is read whole
        total += (head.numel() - language.embed_tokens.weight.numel()) * head.element_size()
    return total


def memory_bandwidth(device: torch.device) -> tuple[float, str]:
    """Bytes/s the device's memory delivers: the data sheet's figure for known GPUs, else a measured copy."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for piece, bandwidth in GPU_BANDWIDTH:
            if piece in name:
                return bandwidth, f"data sheet ({name})"
    size = 256 * 2**20
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        sync(device)
        started = time.perf_counter()
        target.copy_(source)
        sync(device)
        best = min(best, time.perf_counter() - started)
    # a copy reads and writes every byte
    return 2 * size / best, "measured copy"


@contextmanager
def attention(model: Any, implementation: str) -> Iterator[None]:
    """Run with another attention implementation, then restore the model's."""
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(before)

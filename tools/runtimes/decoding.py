"""Pieces of a ``generate`` call: stopping once the request is cancelled, a schema's grammar as
a logits processor, and the decoding batch that prefilled rows continue in together."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any


class StopOnCancel:
    """A stopping criterion, asked after every decoding step: stop once the request is cancelled."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def constrained(constraint: Any) -> dict[str, Any]:
    """``generate`` keyword arguments that apply ``constraint`` (nothing for None)."""
    if constraint is None:
        return {}
    from transformers import LogitsProcessorList

    return {"logits_processor": LogitsProcessorList([constraint])}


def decode_batch(rows: Sequence[tuple[Any, list[int], Any, float]], pad_id: int) -> tuple[Any, Any, int]:
    """The decoding batch of prefilled rows: each row's prompt and first token, left-padded to one width, and
    one KV cache with each row's prompt cache left-padded to match. Returns (inputs, cache, width).

    Padding shows up only as masked positions in the decoding steps' attention, which is
    what the padded positions of a left-padded prefill would have been anyway.
    """
    import torch
    from transformers import BatchFeature, DynamicCache

    width = max(int(inputs["input_ids"].shape[1]) for inputs, _, _, _ in rows) + 1
    columns: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "mm_token_type_ids": []}
    for inputs, new, _, _ in rows:
        ids = inputs["input_ids"]
        token = torch.tensor([[new[-1]]], dtype=ids.dtype, device=ids.device)
        pad = width - ids.shape[1] - 1
        row = {
            "input_ids": torch.cat([ids, token], dim=1),
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1),
        }
        if "mm_token_type_ids" in inputs:
            row["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(token)], dim=1)
        for name, value in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
            if name in row:
                columns[name].append(torch.nn.functional.pad(row[name], (pad, 0), value=value))
    batch = BatchFeature({name: torch.cat(parts) for name, parts in columns.items() if parts})
    layers = []
    for layer in zip(*(kv.layers for _, _, kv, _ in rows)):
        if not all(part.is_initialized for part in layer):
            layers.append((None, None))  # a layer that reads another's keys and values (KV sharing)
            continue
        length = width - 1
        keys = [torch.nn.functional.pad(p.keys, (0, 0, length - p.keys.shape[-2], 0)) for p in layer]
        values = [torch.nn.functional.pad(p.values, (0, 0, length - p.values.shape[-2], 0)) for p in layer]
        layers.append((torch.cat(keys), torch.cat(values)))
    return batch, DynamicCache(ddp_cache_data=layers), width

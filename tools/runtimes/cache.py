"""Work kept between calls, so that one image is never encoded twice and one prompt never prefilled twice.

A resident backend owns one of each:

- ``VisionCache``: per (model, image content hash, budget), the image's soft-token count and the
  vision tower's projected features, on the model's device, in a bytes-capped LRU. A hit skips
  both the pixel preprocessing and the vision tower.
- ``PrefixCache``: the KV caches of recent calls, each with the token ids and image keys it was
  computed from, and the scope (``tools.scope``) of the call; only calls of that scope resume from it. A call whose prompt starts with the same tokens *and* the same images (a
  follow-up turn, or another task on the same image) resumes from the longest such prefix and
  prefills only the rest. Image tokens are one repeated id, so two different images at the same
  budget give identical ids: the image keys are what tells them apart.

Two KV layouts, both croppable at any position, which transformers' own per-layer choice is not
(its sliding-window layers forget what falls out of the window, so they cannot rewind):
``DynamicPrefixCache`` keeps full-length ``DynamicCache`` layers and copies the reused prefix out
of an immutable snapshot; ``StaticPrefixCache`` keeps one preallocated static cache for
``torch.compile`` and rewinds it in place. Sliding-window attention stays exact either way: the
masks apply the window, the cache only holds more than the window.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tools import scope

MiB = 1024 * 1024

#: a shorter shared prefix (the chat template's opening tokens) is not worth resuming from
MIN_REUSE = 32

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# -- a bytes-capped LRU ---------------------------------------------------------------------


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class BytesLRU(Generic[K, V]):
    """A thread-safe LRU capped by the bytes its values hold, not by their count."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return item[0]

    def put(self, key: K, value: V, nbytes: int) -> bool:
        """Keep ``value``, evicting the least recently used; False when it alone is over the cap."""
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self._bytes -= freed
                self.stats.evictions += 1
        return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items


# -- vision cache -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedImage:
    """One image as the language model consumes it at one budget."""

    soft_tokens: int
    #: [soft_tokens, hidden] projected features on the model's device
    features: Any

    @property
    def nbytes(self) -> int:
        return int(self.features.numel() * self.features.element_size())


VisionKey = tuple[str, str, int]


class VisionCache(BytesLRU[tuple[str | None, VisionKey], EncodedImage]):
    """Encoded images keyed by (model, image content hash, budget), for the running request's scope.

    Only the features are kept, not the processed pixels they came from: a hit needs nothing
    else, and at budget 1120 the pixels are ten times the size of the features. Each scope
    (``tools.scope``: one client session of the server) has entries of its own, so a hit, and
    the time it saves, never tells one client that another sent the same picture.
    """

    def __init__(self, max_bytes: int = 512 * MiB) -> None:
        super().__init__(max_bytes)

    def get(self, key: VisionKey) -> EncodedImage | None:  # type: ignore[override]
        return super().get((scope.key(), key))

    def keep(self, key: VisionKey, encoded: EncodedImage) -> bool:
        return self.put((scope.key(), key), encoded, encoded.nbytes)


# -- prefix matching -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageBlock:
    """Where one image sits in a prompt: from its begin-of-image token to one past its end-of-image token."""

    start: int
    end: int
    #: what the block's features depend on: (image content hash, budget)
    key: Hashable


def image_blocks(ids: Sequence[int], image_token_id: int, keys: Sequence[Hashable]) -> list[ImageBlock]:
    """The image blocks of a prompt, each run of image tokens tied to the next key in order."""
    runs: list[tuple[int, int]] = []
    n = 0
    while n < len(ids):
        if ids[n] == image_token_id:
            first = n
            while n < len(ids) and ids[n] == image_token_id:
                n += 1
            # the begin- and end-of-image markers around the run belong to the image
            runs.append((max(first - 1, 0), min(n + 1, len(ids))))
        else:
            n += 1
    if len(runs) != len(keys):
        raise ValueError(f"{len(runs)} runs of image tokens for {len(keys)} images")
    return [ImageBlock(start, end, key) for (start, end), key in zip(runs, keys)]


def reusable_prefix(
    old_ids: Sequence[int], old_blocks: Sequence[ImageBlock], new_ids: Sequence[int], new_blocks: Sequence[ImageBlock]
) -> int:
    """How many leading positions of ``new_ids`` a cache computed for ``old_ids`` holds exactly.

    The tokens must be equal, every image starting inside the prefix must be the same image at
    the same budget, no image may be cut, and at least one token is left to prefill (generate
    needs an input to produce the first new token from).
    """
    limit = min(len(old_ids), len(new_ids) - 1)
    n = 0
    while n < limit and old_ids[n] == new_ids[n]:
        n += 1
    # Each side's images must have an identical twin on the other side; an unpaired run of image
    # tokens (one the model generated, say) cuts the prefix like a different image does.
    for blocks, others in ((new_blocks, old_blocks), (old_blocks, new_blocks)):
        twins = {block.start: block for block in others}
        for block in blocks:
            if block.start < n and (twins.get(block.start) != block or block.end > n):
                n = block.start
    return max(n, 0)


# -- KV caches ------------------------------------------------------------------------------------


def kv_length(kv: Any) -> int:
    return int(kv.get_seq_length())


def kv_nbytes(kv: Any) -> int:
    total = 0
    for layer in kv.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and hasattr(tensor, "numel"):
                total += tensor.numel() * tensor.element_size()
    return int(total)


@dataclass
class KeptPrefix:
    ids: list[int]
    blocks: list[ImageBlock]
    kv: Any
    nbytes: int
    #: the scope (``tools.scope``) whose call computed it: only that scope resumes from it
    owner: str | None = None


class DynamicPrefixCache:
    """The KV caches of the last few calls, as immutable snapshots; a new call copies out the prefix it shares.

    Copying rather than cropping in place leaves every snapshot whole, so interleaved
    conversations (two chats on one server) and several tasks on one image all keep theirs.
    """

    def __init__(self, max_bytes: int = 1024 * MiB, max_entries: int = 8, min_tokens: int = MIN_REUSE) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self._entries: list[KeptPrefix] = []
        self._lock = threading.Lock()

    def begin(self, ids: Sequence[int], blocks: Sequence[ImageBlock], total_tokens: int) -> tuple[Any, int]:
        """A cache to generate ``ids`` with, already holding the longest reusable prefix, and that prefix's length."""
        from transformers import DynamicCache

        owner = scope.key()
        with self._lock:
            best, reused = None, 0
            for entry in self._entries:
                if entry.owner != owner:
                    continue  # how much of another client's prompt matches is not this client's to learn
                n = reusable_prefix(entry.ids, entry.blocks, ids, blocks)
                if n >= self.min_tokens and n > reused:
                    best, reused = entry, n
            if best is not None:
                self._entries.remove(best)
                self._entries.append(best)
        if best is None:
            # No config: every layer a full-length DynamicLayer, so that a later call can resume from any
            # position; see the module docstring.
            return DynamicCache(), 0
        return fork(best.kv, reused), reused

    def end(self, ids: Sequence[int], blocks: Sequence[ImageBlock], kv: Any) -> bool:
        """Keep ``kv``, which must hold exactly ``ids``; False when it does not, or alone is over the cap."""
        if kv_length(kv) != len(ids):
            return False
        nbytes = kv_nbytes(kv)
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            self._entries.append(KeptPrefix(list(ids), list(blocks), kv, nbytes, scope.key()))
            while len(self._entries) > self.max_entries or sum(e.nbytes for e in self._entries) > self.max_bytes:
                self._entries.pop(0)
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of KV cache kept, at most ``max_bytes``."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def fork(kv: Any, length: int) -> Any:
    """A new DynamicCache holding a copy of the first ``length`` positions of ``kv``."""
    from transformers import DynamicCache

    data = [
        (layer.keys[..., :length, :], layer.values[..., :length, :]) if layer.is_initialized else (None, None)
        for layer in kv.layers
    ]
    return DynamicCache(ddp_cache_data=data)


class StaticPrefixCache:
    """One preallocated static KV cache (for ``torch.compile`` and CUDA graphs), rewound in place.

    Its tensors keep their addresses across calls, which compiled decoding steps rely on, so
    there is one cache and one remembered prompt: a call resumes from what it shares with the
    previous call, or starts over. Sliding-window layers get full-length static layers so
    that rewinding is exact.
    """

    def __init__(self, config: Any, min_capacity: int = 4096, min_tokens: int = MIN_REUSE) -> None:
        self.config = config
        self.min_capacity = min_capacity
        self.min_tokens = min_tokens
        self.kv: Any = None
        self.capacity = 0
        self._kept: KeptPrefix | None = None
        self._lock = threading.Lock()

    def begin(self, ids: Sequence[int], blocks: Sequence[ImageBlock], total_tokens: int) -> tuple[Any, int]:
        with self._lock:
            kept, self._kept = self._kept, None  # in flight: remembered again only when the call succeeds
            if self.kv is None or total_tokens > self.capacity:
                # Powers of two from 4096: few sizes, so few compiled graphs.
                self.capacity = max(self.min_capacity, 1 << (total_tokens - 1).bit_length())
                self.kv = static_cache(self.config, self.capacity)
                kept = None
            mine = kept is not None and kept.owner == scope.key()
            reused = reusable_prefix(kept.ids, kept.blocks, ids, blocks) if kept is not None and mine else 0
            if reused < self.min_tokens:
                reused = 0
            rewind(self.kv, reused)
            return self.kv, reused

    def end(self, ids: Sequence[int], blocks: Sequence[ImageBlock], kv: Any) -> bool:
        if kv is not self.kv or kv_length(kv) != len(ids):
            return False
        with self._lock:
            self._kept = KeptPrefix(list(ids), list(blocks), kv, kv_nbytes(kv), scope.key())
        return True

    def clear(self) -> None:
        with self._lock:
            self._kept = None

    @property
    def nbytes(self) -> int:
        """Bytes of the one preallocated cache, whatever it holds."""
        return 0 if self.kv is None else kv_nbytes(self.kv)

    def __len__(self) -> int:
        return int(self._kept is not None)


def static_cache(config: Any, capacity: int) -> Any:
    """transformers' StaticCache with full-length layers in place of its sliding-window ring buffers."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

    kv = StaticCache(config=config, max_cache_len=capacity)
    kv.layers = [StaticLayer(max_cache_len=capacity) if isinstance(l, StaticSlidingWindowLayer) else l for l in kv.layers]
    return kv


def rewind(kv: Any, length: int) -> None:
    """Make a static cache hold its first ``length`` positions; later ones are overwritten before they are read."""
    import torch
    from transformers.cache_utils import StaticLayer

    with torch.inference_mode():
        for layer in kv.layers:
            if isinstance(layer, StaticLayer):
                # in place: compiled graphs hold this tensor's address
                layer.cumulative_length.fill_(length)


PrefixCache = DynamicPrefixCache | StaticPrefixCache

"""The decoded images a process has seen, by image id, within a memory cap."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .image import LoadedImage
from .media import Media
from .shown import MiB


class ImageStore:
    """Thread-safe LRU of decoded images, capped by their decoded size."""

    def __init__(self, max_bytes: int = 512 * MiB) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, LoadedImage] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def put(self, loaded: LoadedImage) -> None:
        """Add or refresh an image; evicts the least recently used ones. The newest
        image is always kept, even alone over the cap, so its id works at once."""
        with self._lock:
            old = self._items.pop(loaded.image_id, None)
            if old is not None:
                self._total -= old.nbytes
            self._items[loaded.image_id] = loaded
            self._total += loaded.nbytes
            while self._total > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._total -= evicted.nbytes

    def get(self, image_id: str) -> LoadedImage | None:
        """The image stored under ``image_id``, or None; a hit counts as a use."""
        with self._lock:
            loaded = self._items.get(image_id)
            if loaded is not None:
                self._items.move_to_end(image_id)
            return loaded

    def ids(self) -> list[str]:
        """The stored image ids, most recently used first (for argument completion)."""
        with self._lock:
            return list(reversed(self._items))

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def __contains__(self, image_id: object) -> bool:
        with self._lock:
            return image_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class DocumentStore:
    """Thread-safe LRU of PDFs and clips as read (their bytes), by image id, capped by their size.

    What a later call that names the id needs: its pages and frames are rendered again, never kept."""

    def __init__(self, max_bytes: int = 256 * MiB) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Media] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def put(self, media: Media) -> None:
        with self._lock:
            old = self._items.pop(media.id, None)
            if old is not None:
                self._total -= len(old.data)
            self._items[media.id] = media
            self._total += len(media.data)
            while self._total > self.max_bytes and len(self._items) > 1:
                _, evicted = self._items.popitem(last=False)
                self._total -= len(evicted.data)

    def get(self, key: str) -> Media | None:
        with self._lock:
            media = self._items.get(key)
            if media is not None:
                self._items.move_to_end(key)
            return media

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

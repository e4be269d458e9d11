"""Image references (paths, URLs, data: URIs, image ids) to decoded images, under an access policy."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from .. import scope
from ..errors import AccessDenied, Cancelled, InvalidRequest, UnknownImage, VlmError
from .decode import decode_image
from .fetch import fetch_url
from .files import read_data_uri, read_path
from .image import IMAGE_ID_RE, LoadedImage, Source, image_id
from .policy import AccessPolicy
from .shown import one_line, quoted, quoted_url
from .store import ImageStore

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class ImageLoader:
    """Turns image references into ``LoadedImage`` under an ``AccessPolicy``."""

    def __init__(self, policy: AccessPolicy, store: ImageStore | None = None) -> None:
        self.policy = policy
        self.store = store if store is not None else ImageStore()
        # URL images one call fetched ahead (``fetch_ahead``), seen only by that call's thread.
        self._ahead = threading.local()

    def fetch_ahead(self, refs: Iterable[str]) -> dict[str, LoadedImage | VlmError]:
        """The http(s) images among ``refs``, fetched now: a server fetches them before the call's
        turn at the model, so a slow download holds up no other call. A failure is kept, to be
        raised where the call meets that image, after the checks that come before it."""
        fetched: dict[str, LoadedImage | VlmError] = {}
        for ref in refs:
            key = ref.strip() if isinstance(ref, str) else ""
            if key[:8].lower().startswith(("http://", "https://")) and key not in fetched:
                try:
                    fetched[key] = self.load(key)
                except Cancelled:
                    raise
                except VlmError as error:
                    fetched[key] = error
        return fetched

    @contextmanager
    def prefetched(self, fetched: dict[str, LoadedImage | VlmError]) -> Iterator[None]:
        """Within the block, on this thread, a URL in ``fetched`` is taken from there, not fetched again."""
        self._ahead.fetched = fetched
        try:
            yield
        finally:
            self._ahead.fetched = None

    def load(self, ref: str) -> LoadedImage:
        """Load a path, http(s) URL, data: URI or image_id; the result is stored.

        Inside a ``tools.scope`` scope, an image_id names only an image that scope loaded itself;
        any other is unknown, in the same words as one nobody loaded."""
        loaded = self._load(ref)
        owner = scope.current()
        if owner is not None:
            owner.know(loaded.image_id)
        return loaded

    def _load(self, ref: str) -> LoadedImage:
        if not isinstance(ref, str):
            raise InvalidRequest(
                "The image reference must be text: a file path, an http(s) URL, a data: URI or an image_id."
            )
        if not ref.strip():
            raise InvalidRequest(
                "The image reference is empty; pass a file path, an http(s) URL, a data: URI or an image_id."
            )
        ref = ref.strip()
        if IMAGE_ID_RE.match(ref):
            owner = scope.current()
            found = self.store.get(ref) if owner is None or owner.knows(ref) else None
            if found is None:
                raise UnknownImage(
                    f"Unknown image_id '{ref}'; send the image itself (path, URL or data: URI) again."
                )
            return replace(found, source="id")
        lower = ref[:8].lower()
        if lower.startswith("data:"):
            return self._finish(read_data_uri(ref, self.policy.limits), "data", "the data: URI")
        if lower.startswith(("http://", "https://")):
            ahead = (getattr(self._ahead, "fetched", None) or {}).get(ref)
            if isinstance(ahead, VlmError):
                raise ahead
            if ahead is not None:
                return ahead
            if not self.policy.allow_urls:
                raise AccessDenied(
                    "Fetching URLs is turned off here; pass a local file or a data: URI instead."
                )
            data = fetch_url(ref, self.policy)
            # A serving engine may fetch the picture itself rather than receive its bytes; kept
            # in the store, so a later image_id reference still knows its URL.
            loaded = replace(self._finish(data, "url", quoted_url(ref)), url=ref)
            self.store.put(loaded)
            return loaded
        scheme = _SCHEME_RE.match(ref)
        if scheme:
            raise InvalidRequest(
                f"URL scheme '{one_line(scheme.group(1))[:20]}' is not supported; use an http(s) URL, a data: URI or a local path."
            )
        return self._finish(read_path(ref, self.policy), "path", quoted(ref))

    def load_many(self, refs: Iterable[str]) -> list[LoadedImage]:
        """Load several references in order; the first failure raises."""
        return [self.load(ref) for ref in refs]

    def _finish(self, data: bytes, source: Source, what: str) -> LoadedImage:
        limits = self.policy.limits
        key = image_id(data)
        cached = self.store.get(key)
        # Same bytes decode to the same picture, so skip the work, unless the
        # shared store holds it from a loader with laxer limits.
        if cached is not None and cached.width * cached.height <= limits.max_pixels:
            return replace(cached, source=source, url=None)
        rgb, fmt = decode_image(data, limits, what=what)
        loaded = LoadedImage(image=rgb, image_id=key, source=source, format=fmt)
        self.store.put(loaded)
        return loaded

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
from .media import Media, Selection, only_images, sniff, split_fragment
from .policy import AccessPolicy
from .shown import one_line, quoted, quoted_data_uri, quoted_url
from .store import DocumentStore, ImageStore

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class ImageLoader:
    """Turns image references into ``LoadedImage`` under an ``AccessPolicy``."""

    def __init__(self, policy: AccessPolicy, store: ImageStore | None = None) -> None:
        self.policy = policy
        self.store = store if store is not None else ImageStore()
        #: PDFs and clips by id, as read (their pages and frames are made per call)
        self.documents = DocumentStore()
        # URL images one call fetched ahead (``fetch_ahead``), seen only by that call's thread.
        self._ahead = threading.local()

    def fetch_ahead(self, refs: Iterable[str]) -> dict[str, LoadedImage | Media | VlmError]:
        """The http(s) images among ``refs``, fetched now: a server fetches them before the call's
        turn at the model, so a slow download holds up no other call. A failure is kept, to be
        raised where the call meets that image, after the checks that come before it."""
        fetched: dict[str, LoadedImage | Media | VlmError] = {}
        for ref in refs:
            key = split_fragment(ref.strip())[0] if isinstance(ref, str) else ""
            if key[:8].lower().startswith(("http://", "https://")) and key not in fetched:
                try:
                    fetched[key] = self.open(key)
                except Cancelled:
                    raise
                except VlmError as error:
                    fetched[key] = error
        return fetched

    @contextmanager
    def prefetched(self, fetched: dict[str, LoadedImage | Media | VlmError]) -> Iterator[None]:
        """Within the block, on this thread, a URL in ``fetched`` is taken from there, not fetched again."""
        self._ahead.fetched = fetched
        try:
            yield
        finally:
            self._ahead.fetched = None

    def load(self, ref: str) -> LoadedImage:
        """Load a path, http(s) URL, data: URI or image_id of a picture; the result is stored.

        Inside a ``tools.scope`` scope, an image_id names only an image that scope loaded itself;
        any other is unknown, in the same words as one nobody loaded. A PDF or a video is refused
        here (``open`` takes them); an animated GIF is its first frame."""
        opened = self.open(ref)
        if isinstance(opened, Media):
            if opened.kind == "clip" and opened.data.startswith(b"GIF"):
                # Where a picture goes, an animated GIF is its first frame, as it always was.
                return self._picture(opened.data, opened.source, opened.what)
            only_images(opened, "This argument")
        assert isinstance(opened, LoadedImage)
        return opened

    def open(self, ref: str) -> LoadedImage | Media:
        """An image (decoded and stored) or a PDF or clip (read whole, kept by id, nothing decoded yet)."""
        loaded = self._load(ref)
        owner = scope.current()
        if owner is not None:
            owner.know(loaded.image_id if isinstance(loaded, LoadedImage) else loaded.id)
        return loaded

    def _load(self, ref: str) -> LoadedImage | Media:
        if not isinstance(ref, str):
            raise InvalidRequest(
                "The image reference must be text: a file path, an http(s) URL, a data: URI or an image_id."
            )
        if not ref.strip():
            raise InvalidRequest(
                "The image reference is empty; pass a file path, an http(s) URL, a data: URI or an image_id."
            )
        ref, selection = split_fragment(ref.strip())
        if IMAGE_ID_RE.match(ref):
            owner = scope.current()
            known = owner is None or owner.knows(ref)
            found = self.store.get(ref) if known else None
            if found is not None:
                return replace(found, source="id")
            media = self.documents.get(ref) if known else None
            if media is None:
                raise UnknownImage(
                    f"Unknown image_id '{ref}'; send the image itself (path, URL or data: URI) again."
                )
            return replace(media, source="id", selection=selection)
        lower = ref[:8].lower()
        if lower.startswith("data:"):
            return self._finish(read_data_uri(ref, self.policy.limits), "data", quoted_data_uri(ref), selection)
        if lower.startswith(("http://", "https://")):
            ahead = (getattr(self._ahead, "fetched", None) or {}).get(ref)
            if isinstance(ahead, VlmError):
                raise ahead
            if ahead is not None:
                return ahead if isinstance(ahead, LoadedImage) else replace(ahead, selection=selection)
            if not self.policy.allow_urls:
                raise AccessDenied(
                    "Fetching URLs is turned off here; pass a local file or a data: URI instead."
                )
            data = fetch_url(ref, self.policy)
            # A serving engine may fetch the picture itself rather than receive its bytes; kept
            # in the store, so a later image_id reference still knows its URL.
            finished = replace(self._finish(data, "url", quoted_url(ref), selection), url=ref)
            if isinstance(finished, LoadedImage):
                self.store.put(finished)
            else:
                self.documents.put(finished)
            return finished
        scheme = _SCHEME_RE.match(ref)
        if scheme:
            raise InvalidRequest(
                f"URL scheme '{one_line(scheme.group(1))[:20]}' is not supported; use an http(s) URL, a data: URI or a local path."
            )
        return self._finish(read_path(ref, self.policy), "path", quoted(ref), selection)

    def load_many(self, refs: Iterable[str]) -> list[LoadedImage]:
        """Load several references in order; the first failure raises."""
        return [self.load(ref) for ref in refs]

    def _finish(self, data: bytes, source: Source, what: str, selection: Selection = Selection()) -> LoadedImage | Media:
        kind = sniff(data)
        if kind != "image":
            media = Media(kind, data, image_id(data), what, source, selection)
            self.documents.put(media)
            return media
        return self._picture(data, source, what)

    def _picture(self, data: bytes, source: Source, what: str) -> LoadedImage:
        """The bytes decoded as one picture (an animated GIF: its first frame)."""
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

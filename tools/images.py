"""Load images from paths, URLs, data: URIs and image ids, safely.

This is the one place that turns a user's image reference into a decoded RGB
picture. It knows nothing of MCP or terminals: adapters catch ``VlmError`` and
print its message. Everything here assumes the reference may be hostile: paths
that escape the allowed folders, URLs that point into the local network, bodies
that never end, files that claim a billion pixels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http
import io
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from struct import error as struct_error
from typing import Any, Literal

import httpx
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tools import cancel, scope
from tools.errors import AccessDenied, Cancelled, ImageError, InvalidRequest, UnknownImage, VlmError
from tools.safe_open import open_beneath

__all__ = [
    "IMAGE_ID_RE",
    "AccessPolicy",
    "ImageLoader",
    "ImageStore",
    "Limits",
    "ImageInput",
    "LoadedImage",
    "decode_image",
    "image_id",
]

IMAGE_ID_RE = re.compile(r"^img_[0-9a-f]{16}$")

Source = Literal["path", "url", "data", "id"]

MiB = 1024 * 1024

# Pillow plugin ids we open; anything else (EPS, SVG, PSD ...) is refused even
# when it is renamed, because Image.open(formats=...) only tries these.
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"

_DATA_TYPES = {
    "image/png",
    "image/jpeg",
    "image/jpg",  # not registered, but common enough in hand-written URIs
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
}

_REDIRECTS = {301, 302, 303, 307, 308}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SHOW_MAX = 60


@dataclass(frozen=True)
class Limits:
    """Caps that keep one image from exhausting memory, CPU or time."""

    max_bytes: int = 20 * MiB
    max_pixels: int = 40_000_000
    url_timeout_s: float = 10.0
    max_redirects: int = 5


@dataclass(frozen=True)
class AccessPolicy:
    """What a server or command may read: which folders and files, and which URLs."""

    allowed_dirs: tuple[Path, ...] = ()
    allowed_files: tuple[Path, ...] = ()
    allow_urls: bool = True
    allow_private_urls: bool = False
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        # Comparisons below are only sound between fully resolved paths, so
        # normalise here rather than trust every caller to have done it.
        object.__setattr__(
            self, "allowed_dirs", tuple(_resolve_path(p) for p in self.allowed_dirs)
        )
        object.__setattr__(
            self, "allowed_files", tuple(_resolve_path(p) for p in self.allowed_files)
        )

    @classmethod
    def for_server(
        cls,
        dirs: Sequence[str | Path] | None = None,
        *,
        allow_private_urls: bool = False,
        allow_urls: bool = True,
        limits: Limits | None = None,
    ) -> AccessPolicy:
        """A long-running server: files under ``dirs`` (default: the current folder)."""
        chosen = [Path.cwd()] if dirs is None else list(dirs)
        resolved = []
        for d in chosen:
            path = _resolve_path(d)
            if not path.is_dir():
                # A typo here would otherwise surface much later as "access denied".
                raise InvalidRequest(f"Allowed folder {_show(str(d))} is not an existing folder.")
            resolved.append(path)
        return cls(
            allowed_dirs=tuple(resolved),
            allow_urls=allow_urls,
            allow_private_urls=allow_private_urls,
            limits=limits or Limits(),
        )

    @classmethod
    def for_files(
        cls,
        paths: Iterable[str | Path],
        *,
        allow_private_urls: bool = False,
        allow_urls: bool = True,
        limits: Limits | None = None,
    ) -> AccessPolicy:
        """A one-shot command: exactly the files the user named, nothing else."""
        return cls(
            allowed_files=tuple(_resolve_path(p) for p in paths),
            allow_urls=allow_urls,
            allow_private_urls=allow_private_urls,
            limits=limits or Limits(),
        )

    def root_of(self, resolved: Path) -> Path:
        """The folder an allowed path is opened from: its allowed folder, or an allowed file's own folder."""
        for folder in self.allowed_dirs:
            if resolved.is_relative_to(folder) and resolved != folder:
                return folder
        return resolved.parent

    def allows_path(self, resolved: Path) -> bool:
        """Whether a fully resolved path is one this policy may read."""
        if resolved in self.allowed_files:
            return True
        # is_relative_to compares whole components, so /data/allowed2 is not
        # inside /data/allowed the way a string prefix test would claim.
        return any(resolved.is_relative_to(d) for d in self.allowed_dirs)


@dataclass(frozen=True, eq=False)
class ImageInput:
    """An image as the model layers take it: pixels, content hash and source travel together.

    The hash keys the runtimes' caches (an encoded image is reused only for the same content);
    the URL lets an engine fetch the picture itself. Treat ``pixels`` as read-only.
    """

    pixels: Image.Image
    #: the content hash: the image_id of its bytes, or a hash of its pixels (``from_pixels``)
    hash: str
    #: the http(s) URL its bytes came from, if any
    url: str | None = None

    @classmethod
    def from_pixels(cls, image: Image.Image, url: str | None = None) -> ImageInput:
        """An image that did not come through the loader, known by a hash of its pixels."""
        digest = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=16)
        digest.update(image.tobytes())
        return cls(image, "px_" + digest.hexdigest(), url)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.size


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded RGB image and where it came from. Treat ``image`` as read-only:
    the same object is shared through the store."""

    image: Image.Image
    image_id: str
    source: Source
    format: str
    #: the http(s) URL it was fetched from, when it was
    url: str | None = None

    @property
    def input(self) -> ImageInput:
        """The image with its identity, as the model layers take it."""
        return ImageInput(self.image, self.image_id, self.url)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def nbytes(self) -> int:
        return self.image.width * self.image.height * 3


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


def image_id(data: bytes) -> str:
    """Stable id of an image's original bytes."""
    return "img_" + hashlib.sha256(data).hexdigest()[:16]


# catch_warnings swaps process-wide state; the lock keeps our own threads from
# restoring each other's filters out of order.
_WARN_LOCK = threading.Lock()


def decode_image(
    data: bytes, limits: Limits, *, what: str = "the image"
) -> tuple[Image.Image, str]:
    """Decode ``data`` into an RGB image; returns it and the detected format.

    ``what`` names the image in error messages (e.g. a quoted path).
    """
    if not data:
        raise ImageError(f"{_cap(what)} is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{_cap(what)} is larger than the {_size(limits.max_bytes)} limit; send a smaller file."
        )
    try:
        with _WARN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_FORMATS)
        fmt = "JPEG" if im.format == "MPO" else (im.format or "unknown")
        width, height = im.size
        # The header is all that has been read so far: refuse before .load()
        # allocates width*height pixels.
        if width * height > limits.max_pixels:
            raise ImageError(
                f"{_cap(what)} is {width} by {height} pixels, over the "
                f"{limits.max_pixels:,}-pixel limit; send a smaller image."
            )
        im.load()  # first frame / page only; later frames are never decoded
        im = _apply_orientation(im)
        rgb = _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own bomb guard fired first (its cap may be below ours).
        cap = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
        raise ImageError(
            f"{_cap(what)} is over the {cap:,}-pixel limit; send a smaller image."
        ) from None
    except UnidentifiedImageError:
        if _looks_supported(data):
            # The right signature but an unreadable header: a broken file, not a wrong one.
            raise ImageError(
                f"{_cap(what)} is damaged or truncated and could not be decoded; re-export or re-send it."
            ) from None
        raise ImageError(f"{_cap(what)} is not a {_FORMAT_NAMES} image.") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct_error):
        raise ImageError(
            f"{_cap(what)} is damaged or truncated and could not be decoded; re-export or re-send it."
        ) from None
    return rgb, fmt


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
            return self._finish(_read_data_uri(ref, self.policy.limits), "data", "the data: URI")
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
            data = _fetch_url(ref, self.policy)
            # A serving engine may fetch the picture itself rather than receive its bytes; kept
            # in the store, so a later image_id reference still knows its URL.
            loaded = replace(self._finish(data, "url", _show_url(ref)), url=ref)
            self.store.put(loaded)
            return loaded
        scheme = _SCHEME_RE.match(ref)
        if scheme:
            raise InvalidRequest(
                f"URL scheme '{_clean(scheme.group(1))[:20]}' is not supported; use an http(s) URL, a data: URI or a local path."
            )
        return self._finish(_read_path(ref, self.policy), "path", _show(ref))

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


# --- local files ------------------------------------------------------------


def _resolve_path(p: str | Path) -> Path:
    return Path(os.path.expanduser(p)).resolve()


def _read_path(ref: str, policy: AccessPolicy) -> bytes:
    shown = _show(ref)
    if not policy.allowed_dirs and not policy.allowed_files:
        raise AccessDenied(
            f"Reading local files is turned off here, so {shown} cannot be opened; send it as a data: URI."
        )
    try:
        resolved = _resolve_path(ref)
    except (OSError, RuntimeError, ValueError):
        # RuntimeError: symlink loop; ValueError: NUL byte. Both messages name paths.
        raise ImageError(f"{_cap(shown)} is not a usable file path.") from None
    # Access before existence, so nobody can probe which files exist outside.
    if not policy.allows_path(resolved):
        raise AccessDenied(
            f"{_cap(shown)} is outside the allowed folders and files; "
            "move it into an allowed folder or send it as a data: URI."
        )
    limits = policy.limits
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        raise ImageError(f"No image at {shown}.") from None
    except NotADirectoryError:
        raise ImageError(f"No image at {shown}.") from None
    except PermissionError:
        raise ImageError(f"{_cap(shown)} cannot be read: permission denied.") from None
    except OSError:
        raise ImageError(f"{_cap(shown)} cannot be read.") from None
    # stat first: opening a FIFO or a device can block or never end.
    _check_regular(info, shown, limits)
    try:
        fd = open_beneath(policy.root_of(resolved), resolved)
    except PermissionError:
        raise ImageError(f"{_cap(shown)} cannot be read: permission denied.") from None
    except OSError:
        raise ImageError(f"{_cap(shown)} cannot be read.") from None
    try:
        # The path may have been swapped since the stat; judge what we opened.
        _check_regular(os.fstat(fd), shown, limits)
        chunks: list[bytes] = []
        left = limits.max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        raise ImageError(f"{_cap(shown)} cannot be read.") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data:
        raise ImageError(f"{_cap(shown)} is empty.")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{_cap(shown)} is larger than the {_size(limits.max_bytes)} limit; send a smaller file."
        )
    return data


def _check_regular(info: os.stat_result, shown: str, limits: Limits) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{_cap(shown)} is a folder, not an image file.")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{_cap(shown)} is not a regular file; pass an image file.")
    if info.st_size == 0:
        raise ImageError(f"{_cap(shown)} is empty.")
    if info.st_size > limits.max_bytes:
        raise ImageError(
            f"{_cap(shown)} is larger than the {_size(limits.max_bytes)} limit; send a smaller file."
        )


# --- data: URIs -------------------------------------------------------------


def _read_data_uri(ref: str, limits: Limits) -> bytes:
    # Never quote the URI itself: it is long, and it is the user's image.
    header, comma, payload = ref.partition(",")
    if not comma:
        raise ImageError("The data: URI has no ',' before its data; use data:image/png;base64,<data>.")
    parts = [p.strip().lower() for p in header[5:].split(";")]
    media = parts[0]
    if media not in _DATA_TYPES:
        raise ImageError(
            "The data: URI must have an image media type (png, jpeg, webp, gif, bmp or tiff)."
        )
    if parts[-1] != "base64":
        raise ImageError("The data: URI must be base64-encoded; use data:image/png;base64,<data>.")
    # Count before decoding (or copying) so an oversize payload costs nothing.
    spaces = sum(payload.count(c) for c in " \t\r\n")
    chars = len(payload) - spaces
    if chars * 3 // 4 - 2 > limits.max_bytes:
        raise ImageError(
            f"The data: URI is larger than the {_size(limits.max_bytes)} limit; send a smaller image."
        )
    if spaces:
        # Line-wrapped base64 is common when pasted; validate=True would refuse it.
        payload = re.sub(r"[ \t\r\n]+", "", payload)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(
            "The data: URI holds invalid base64; encode the image bytes with standard base64."
        ) from None
    if not data:
        raise ImageError("The data: URI holds no image data.")
    return data


# --- URLs -------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _is_public_ip(ip: IPAddress) -> bool:
    """Whether an address is on the public internet (safe to fetch from a server)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Embedded IPv4 forms reach the IPv4 host they carry; judge that one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _is_public_ip(embedded)
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to; numeric forms like 2130706433 included."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class _Fetch:
    """One URL fetch, run on a worker thread so the caller can give up at the
    deadline even while a read, a DNS lookup or a header drip is blocked."""

    def __init__(self, url: str, policy: AccessPolicy) -> None:
        self.url = url
        self.policy = policy
        self.limits = policy.limits
        self.deadline = time.monotonic() + self.limits.url_timeout_s
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._cancelled = False

    def run(self) -> None:
        try:
            self.data = self._get()
        except BaseException as exc:  # handed to the waiting thread, not lost
            self.error = exc
        finally:
            self.done.set()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def _stop_if_cancelled(self) -> None:
        # Between hops and chunks: a cancelled fetch sends no further request and reads no further byte.
        if self._cancelled:
            raise Cancelled("The request was cancelled before its image was fetched.")

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            cancelled = self._cancelled
            if not cancelled:
                self._sockets.append(sock)
        if cancelled:
            _shutdown(sock)

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event not in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        # Shutting the socket down is what wakes a blocked read at the deadline.
        self._track(sock)
        if event == "connection.connect_tcp.complete" and not self.policy.allow_private_urls:
            # DNS may answer differently now than at our check (rebinding), so
            # judge the address we actually reached too.
            try:
                peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%")[0])
            except (OSError, ValueError):
                peer = None
            if peer is None or not _is_public_ip(peer):
                stream.close()
                raise AccessDenied(_private_message(self.url), param="allow_private_urls")

    def _get(self) -> bytes:
        limits = self.limits
        shown = _show_url(self.url)
        try:
            current = httpx.URL(self.url)
        except (httpx.InvalidURL, ValueError):
            raise InvalidRequest(f"{shown} is not a valid URL.") from None
        headers = {
            "User-Agent": "vlm-agent",
            "Accept": "image/*",
            # iter_raw below returns bytes as sent; asking for identity keeps a
            # gzip bomb from expanding past the byte cap inside one chunk.
            "Accept-Encoding": "identity",
        }
        # trust_env=False: no proxy from the environment (it would do the DNS
        # lookup we check) and no .netrc credentials sent to arbitrary hosts.
        with httpx.Client(follow_redirects=False, trust_env=False, headers=headers) as client:
            for hop in range(limits.max_redirects + 1):
                self._stop_if_cancelled()
                self._check_target(current, first=hop == 0)
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise _timeout_error(self.url, limits)
                request = client.build_request(
                    "GET",
                    current,
                    timeout=httpx.Timeout(left),
                    extensions={"trace": self._trace},
                )
                response = client.send(request, stream=True)
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        if hop == limits.max_redirects:
                            raise ImageError(
                                f"{shown} redirects more than {limits.max_redirects} times; "
                                "pass the final image URL instead."
                            )
                        try:
                            current = current.join(location)
                        except (httpx.InvalidURL, ValueError):
                            raise ImageError(f"{shown} redirects to an invalid URL.") from None
                        continue
                    return self._body(response, shown)
                finally:
                    response.close()
        raise AssertionError("unreachable")  # the loop returns or raises

    def _check_target(self, url: httpx.URL, *, first: bool) -> None:
        shown = _show_url(self.url)
        if url.scheme not in ("http", "https"):
            if first:
                raise InvalidRequest(f"{shown} is not an http(s) URL.")
            raise AccessDenied(
                f"{shown} redirects to a non-http(s) URL, which is never followed; pass the image URL itself."
            )
        host = url.host
        if not host:
            raise InvalidRequest(f"{shown} has no host name.")
        if self.policy.allow_private_urls:
            return
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = _resolve(host, port)
        except (OSError, UnicodeError, ValueError):
            raise ImageError(
                f"The host '{_clean(host)[:_SHOW_MAX]}' could not be resolved; check the URL."
            ) from None
        if not addresses or not all(_is_public_ip(ip) for ip in addresses):
            if first:
                raise AccessDenied(_private_message(self.url), param="allow_private_urls")
            raise AccessDenied(
                f"{shown} redirects to a private or local network address, which is never "
                "fetched here; pass a public image URL or send the file."
            )

    def _body(self, response: httpx.Response, shown: str) -> bytes:
        limits = self.limits
        status = response.status_code
        if status >= 400:
            raise ImageError(
                f"The server answered {status} {_phrase(status)} for {shown}; check the URL."
            )
        if not 200 <= status < 300:
            raise ImageError(
                f"The server answered {status} {_phrase(status)} for {shown} instead of an image."
            )
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        # No content type at all is left to the decoder, which sniffs the bytes.
        if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise ImageError(
                f"{_cap(shown)} is a {_clean(ctype)[:40]} document, not an image; pass a direct image URL."
            )
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_bytes:
            raise ImageError(
                f"{_cap(shown)} is larger than the {_size(limits.max_bytes)} limit; send a smaller image."
            )
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_raw():
            total += len(chunk)
            if total > limits.max_bytes:
                raise ImageError(
                    f"{_cap(shown)} is larger than the {_size(limits.max_bytes)} limit; send a smaller image."
                )
            chunks.append(chunk)
            if time.monotonic() > self.deadline:
                raise _timeout_error(self.url, limits)
            self._stop_if_cancelled()
        data = b"".join(chunks)
        if not data:
            raise ImageError(f"{_cap(shown)} returned an empty body.")
        return data


def _fetch_url(url: str, policy: AccessPolicy) -> bytes:
    cancel.check()
    job = _Fetch(url, policy)
    worker = threading.Thread(target=job.run, name="vlm-image-fetch", daemon=True)
    worker.start()
    try:
        # A cancelled request stops waiting at once: it must not hold its queue place for a slow download.
        finished = cancel.wait(job.done, job.deadline - time.monotonic())
    except Cancelled:
        job.cancel()
        raise
    if not finished:
        # The worker notices the shut-down socket and ends on its own.
        job.cancel()
        raise _timeout_error(url, policy.limits)
    error = job.error
    if error is None:
        assert job.data is not None
        return job.data
    raise _fetch_error(error, url, policy.limits) from None


def _fetch_error(error: BaseException, url: str, limits: Limits) -> BaseException:
    """Our error for whatever the worker raised; unexpected bugs pass through."""
    if isinstance(error, (ImageError, AccessDenied, InvalidRequest, Cancelled)):
        return error
    shown = _show_url(url)
    if isinstance(error, httpx.TimeoutException):
        return _timeout_error(url, limits)
    if isinstance(error, httpx.ConnectError):
        if _caused_by(error, ssl.SSLCertVerificationError):
            return ImageError(f"The TLS certificate of {shown} could not be verified; use a trusted https URL.")
        return ImageError(f"Could not connect to the server of {shown}; check the URL and that the server is up.")
    if isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError)):
        return ImageError(
            f"The connection broke off before {shown} was complete; try again or download the file first."
        )
    if isinstance(error, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return InvalidRequest(f"{shown} is not a valid http(s) URL.")
    if isinstance(error, (httpx.HTTPError, httpx.StreamError, OSError, ValueError)):
        return ImageError(f"Could not fetch {shown}; check the URL or download the file first.")
    return error


def _timeout_error(url: str, limits: Limits) -> ImageError:
    return ImageError(
        f"Fetching {_show_url(url)} took longer than {limits.url_timeout_s:g} s; "
        "try again or download the file first."
    )


def _private_message(url: str) -> str:
    return (
        f"{_cap(_show_url(url))} points to a private or local network address, which is refused "
        "unless private URLs are allowed ({param}); pass a public image URL or send the file."
    )


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _shutdown(sock: socket.socket) -> None:
    try:
        # The base-class call: SSLSocket.shutdown would also tear down its SSL
        # object under the reading thread's feet.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _phrase(status: int) -> str:
    # The server's own reason text is untrusted; use the standard one.
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "(unknown status)"


# --- decoding helpers ---------------------------------------------------------

_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _looks_supported(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _apply_orientation(im: Image.Image) -> Image.Image:
    try:
        turned = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct_error):
        # A broken EXIF block should not cost the user an otherwise fine image.
        return im
    return turned if turned is not None else im


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        # Pillow's own convert clips 16-bit and float values at 255 instead of scaling.
        return Image.fromarray(_to_8bit(im)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Models see no alpha; transparent areas read best as white paper.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im.copy()  # detach from the decoder's file object
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(values.min()) if values.size else 0.0
    hi = float(values.max()) if values.size else 0.0
    if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = values
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = values / 257.0  # 16-bit data widened to 32-bit "I"
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else values * 0.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --- messages ---------------------------------------------------------------


def _clean(text: str) -> str:
    # One-line messages: a newline or control character in a ref would split them.
    return "".join(c if c.isprintable() else "?" for c in text)


def _show(ref: str) -> str:
    """A user reference quoted for a message: one line, at most ~60 characters. A long one keeps
    its start (the scheme, the top folders) and its end (the file name), where people look."""
    text = _clean(ref)
    if len(text) > _SHOW_MAX:
        head = _SHOW_MAX // 3
        text = text[:head] + "…" + text[len(text) - (_SHOW_MAX - head - 1):]
    return f"'{text}'"


def _show_url(url: str) -> str:
    # Credentials in the URL must not be echoed back.
    return _show(re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@]*@", r"\1", url))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text[:1].isalpha() else text


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.4g} MiB"
    if n >= 1024:
        return f"{n / 1024:.4g} KiB"
    return f"{n}-byte"

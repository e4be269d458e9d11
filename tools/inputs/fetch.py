"""Fetching an image URL, safely: public addresses only (on every redirect), bounded in size and time, cancellable."""

from __future__ import annotations

import http
import ipaddress
import socket
import ssl
import threading
import time
from typing import Any

import httpx

from .. import cancel
from ..errors import AccessDenied, Cancelled, ImageError, InvalidRequest
from .policy import AccessPolicy, Limits
from .shown import SHOW_MAX, capital, one_line, quoted_url, size_words

_REDIRECTS = {301, 302, 303, 307, 308}

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
        shown = quoted_url(self.url)
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
        shown = quoted_url(self.url)
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
                f"The host '{one_line(host)[:SHOW_MAX]}' could not be resolved; check the URL."
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
                f"{capital(shown)} is a {one_line(ctype)[:40]} document, not an image; pass a direct image URL."
            )
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_bytes:
            raise ImageError(
                f"{capital(shown)} is larger than the {size_words(limits.max_bytes)} limit; send a smaller image."
            )
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_raw():
            total += len(chunk)
            if total > limits.max_bytes:
                raise ImageError(
                    f"{capital(shown)} is larger than the {size_words(limits.max_bytes)} limit; send a smaller image."
                )
            chunks.append(chunk)
            if time.monotonic() > self.deadline:
                raise _timeout_error(self.url, limits)
            self._stop_if_cancelled()
        data = b"".join(chunks)
        if not data:
            raise ImageError(f"{capital(shown)} returned an empty body.")
        return data


def fetch_url(url: str, policy: AccessPolicy) -> bytes:
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
    shown = quoted_url(url)
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
        f"Fetching {quoted_url(url)} took longer than {limits.url_timeout_s:g} s; "
        "try again or download the file first."
    )


def _private_message(url: str) -> str:
    return (
        f"{capital(quoted_url(url))} points to a private or local network address, which is refused "
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

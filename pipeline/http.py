"""One HTTP client for feeds and pages: identity, timeouts, size cap, redirects, address checks."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
import zlib
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from pipeline.models import FetchResult
from pipeline.settings import Settings

LOGGER = logging.getLogger(__name__)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
ALLOWED_SCHEMES = frozenset({"http", "https"})
CHUNK_SIZE = 64 * 1024
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's setting for the gzip container
KEPT_HEADERS = ("content-type", "etag", "last-modified", "content-location", "retry-after", "cache-control")


class AddressNotAllowed(Exception):
    """The URL resolves to an address the settings forbid (loopback, private, link-local ...)."""


def _address_error(host: str, port: int) -> str | None:
    """Return why `host` may not be fetched, or None when every resolved address is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror}"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            return f"address {address} of host {host!r} is not public (set NEWS_ALLOW_PRIVATE_ADDRESSES to allow)"
    return None


class HttpClient:
    """Fetches URLs politely and within bounds; errors come back as FetchResult, never as exceptions."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool = urllib3.PoolManager(
            num_pools=32,
            maxsize=max(1, settings.page_concurrency) + 1,  # the page threads and the thread polling feeds
            # one quiet retry on a connect or read error covers keep-alive connections the server closed while
            # pooled; everything else (statuses, redirects) is decided here
            retries=urllib3.Retry(total=1, connect=1, read=1, redirect=0, status=0, other=0,
                                  raise_on_redirect=False, raise_on_status=False),
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
        )
        self._base_headers = {"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate"}

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(
        self,
        url: str,
        *,
        accept: str = "*/*",
        etag: str | None = None,
        last_modified: str | None = None,
        keep_gzip: bool = False,
    ) -> FetchResult:
        """GET `url`, following redirects; conditional when validators are given.

        With `keep_gzip`, a gzip-encoded body is returned as sent (`body_encoding` "gzip", so storing it costs
        no compression of our own) once it has decompressed completely within the size cap; the decompressed
        bytes come along in `decoded`.
        """
        started = time.monotonic()
        # headers given per request replace the pool's defaults, so the identity is added here
        headers = {**self._base_headers, "Accept": accept}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        current = url
        for _hop in range(self._settings.max_redirects + 1):
            refusal = self._refusal(current)
            if refusal:
                return self._failure(url, current, None, refusal, started, retryable=False)
            try:
                response = self._pool.request(
                    "GET", current, headers=headers, redirect=False, preload_content=False, decode_content=False
                )
            except Urllib3Error as exc:
                return self._failure(url, current, None, f"connection failed: {_reason(exc)}", started,
                                     retryable=True)
            try:
                if response.status in REDIRECT_CODES:
                    location = response.headers.get("Location")
                    if not location:
                        return self._failure(url, current, response.status, "redirect without Location",
                                             started, retryable=False)
                    current = urljoin(current, location)
                    continue
                return self._read(url, current, response, started, keep_gzip)
            finally:
                if not response.isclosed() and response.length_remaining != 0:
                    # an unread body (redirect, error page, refused content) would be taken for the next
                    # response on this keep-alive connection: drop the connection instead
                    response.close()
                response.release_conn()
        return self._failure(url, current, None, f"more than {self._settings.max_redirects} redirects", started,
                             retryable=False)

    def _refusal(self, url: str) -> str | None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            return f"unsupported URL scheme {parts.scheme!r}"
        if not parts.hostname:
            return "URL has no host"
        if self._settings.allow_private_addresses:
            return None
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        return _address_error(parts.hostname, port)

    def _read(self, url: str, final_url: str, response: urllib3.BaseHTTPResponse, started: float,
              keep_gzip: bool) -> FetchResult:
        kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
        if response.status == 304:
            return FetchResult(url, final_url, 304, kept, b"", time.monotonic() - started)
        if response.status >= 400:
            error = f"HTTP {response.status}"
            return self._failure(url, final_url, response.status, error, started,
                                 retryable=response.status in RETRYABLE_CODES, headers=kept)
        cap = self._settings.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            return self._failure(url, final_url, response.status,
                                 f"body too large: Content-Length {declared} > {cap} bytes", started,
                                 retryable=False, headers=kept)
        # a gzip body is kept as sent and decompressed alongside; both sizes are held to the cap (bytes after
        # the end of the gzip stream decompress to nothing, so the raw size is checked too)
        gunzip = (zlib.decompressobj(GZIP_WBITS)
                  if keep_gzip and response.headers.get("Content-Encoding", "").strip().lower() == "gzip" else None)
        chunks: list[bytes] = []
        decoded: list[bytes] = []
        size = raw = 0
        deadline = started + self._settings.total_timeout
        try:
            for chunk in response.stream(CHUNK_SIZE, decode_content=gunzip is None):
                raw += len(chunk)
                size += len(chunk) if gunzip is None else _inflate(gunzip, chunk, cap - size, decoded)
                if size > cap or raw > cap:
                    return self._failure(url, final_url, response.status,
                                         f"body too large: over {cap} bytes", started, retryable=False,
                                         headers=kept)
                if time.monotonic() > deadline:
                    return self._failure(url, final_url, response.status,
                                         f"took longer than {self._settings.total_timeout:g} s", started,
                                         retryable=True, headers=kept)
                chunks.append(chunk)
        except (Urllib3Error, zlib.error) as exc:
            return self._failure(url, final_url, response.status, f"reading body failed: {_reason(exc)}",
                                 started, retryable=True, headers=kept)
        if gunzip is not None and not gunzip.eof:
            return self._failure(url, final_url, response.status, "reading body failed: gzip body cut short",
                                 started, retryable=True, headers=kept)
        body = b"".join(chunks)
        if gunzip is not None and gunzip.unused_data:
            # bytes after the first gzip member (more members, or junk): keep what the server meant, decoded
            return self._read_decoded(url, final_url, response.status, kept, body, started)
        if gunzip is None:
            return FetchResult(url, final_url, response.status, kept, body, time.monotonic() - started)
        return FetchResult(url, final_url, response.status, kept, body, time.monotonic() - started,
                           body_encoding="gzip", decoded=b"".join(decoded))

    def _read_decoded(self, url: str, final_url: str, status: int, kept: dict[str, str], body: bytes,
                      started: float) -> FetchResult:
        cap = self._settings.max_bytes
        parts: list[bytes] = []
        size = 0
        data = body
        while data:
            member = zlib.decompressobj(GZIP_WBITS)
            try:
                piece = member.decompress(data, cap - size + 1)
                while True:
                    parts.append(piece)
                    size += len(piece)
                    if size > cap or not member.unconsumed_tail:
                        break
                    piece = member.decompress(member.unconsumed_tail, cap - size + 1)
            except zlib.error:
                break  # junk after a complete member is ignored, as browsers do
            if size > cap or not member.eof:
                break
            data = member.unused_data
        if size > cap:
            return self._failure(url, final_url, status, f"body too large: over {cap} bytes", started,
                                 retryable=False, headers=kept)
        return FetchResult(url, final_url, status, kept, b"".join(parts), time.monotonic() - started)

    @staticmethod
    def _failure(
        url: str,
        final_url: str,
        status: int | None,
        error: str,
        started: float,
        *,
        retryable: bool,
        headers: dict[str, str] | None = None,
    ) -> FetchResult:
        LOGGER.info("fetch of %s failed: %s", url, error)
        return FetchResult(url, final_url, status, headers or {}, b"", time.monotonic() - started, error,
                           retryable)


def _inflate(gunzip: zlib._Decompress, data: bytes, limit: int, into: list[bytes]) -> int:
    """Decompress `data` into `into`, stopping once past `limit` bytes (a small gzip body can expand to
    gigabytes, so no more than `limit` + 1 bytes are ever produced); returns how many were."""
    size = 0
    while data and size <= limit:
        piece = gunzip.decompress(data, limit - size + 1)
        into.append(piece)
        size += len(piece)
        data = gunzip.unconsumed_tail
    return size


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    # urllib3 prefixes the pool repr; the last clause is the useful part
    return text.rsplit(": ", 1)[-1] if len(text) > 160 else text

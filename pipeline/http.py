"""One HTTP client for feeds and pages: identity, timeouts, size cap, redirects, address checks."""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

from pipeline.models import FetchResult
from pipeline.settings import Settings, parse_networks

LOGGER = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
ALLOWED_SCHEMES = frozenset({"http", "https"})
CHUNK_SIZE = 64 * 1024
ACCEPT_ENCODING = "gzip, deflate"  # brotli is not offered: its bombs inflate furthest, and it needs a C extension
OFFERED_CODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's setting for the gzip container
KEPT_HEADERS = ("content-type", "content-encoding", "content-language", "etag", "last-modified",
                "content-location", "retry-after", "cache-control", "expires", "date")


# cloud metadata services, named so a refusal says what was reached for (all of them are non-public anyway)
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "100.100.100.200", "192.0.0.192", "fd00:ec2::254",
))
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
# what a page's and a feed's media type must contain (feeds: rss+xml, atom+xml, rdf+xml, xml, text/xml, text/*)
PAGE_TYPES = ("text/html", "application/xhtml+xml")
FEED_TYPES = ("xml", "text/")
# the start of binary formats that servers label text/html (WHATWG MIME sniffing signatures)
BINARY_MAGIC = (
    (b"%PDF-", "PDF"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"\xff\xd8\xff", "JPEG"), (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"), (b"RIFF", "RIFF"),
    (b"\x7fELF", "ELF"), (b"MZ", "Windows executable"), (b"OggS", "Ogg"),
    (b"ID3", "MP3"), (b"\x1aE\xdf\xa3", "Matroska/WebM"), (b"BZh", "bzip2"), (b"\xfd7zXZ", "xz"),
)
# control bytes no text has (WHATWG "binary data bytes"): a NUL, or over 1% of them in the first kilobyte
BINARY_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")
BINARY_SNIFF_BYTES = 1024
BINARY_MAX_SHARE = 0.01
TEXT_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


class AddressNotAllowed(Exception):
    """The host resolves to an address the settings forbid (loopback, private, link-local, metadata ...)."""


AddressPolicy = Callable[[IPAddress], bool]


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` is a public unicast address; addresses embedding an IPv4 one (mapped, 6to4, Teredo,
    NAT64) are judged by that address."""
    if address in METADATA_ADDRESSES or address.is_multicast or not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and address in NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return True


def _policy(allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> AddressPolicy:
    """Public addresses, and those of `allowed_networks` except cloud metadata services."""
    if not allowed_networks:
        return is_public_address
    return lambda address: is_public_address(address) or (
        address not in METADATA_ADDRESSES and any(address in network for network in allowed_networks))


def _vetted_addresses(host: str, port: int, allowed: AddressPolicy) -> list[tuple[int, tuple]]:
    """Resolve `host` once and return (family, socket address) pairs to connect to; raise AddressNotAllowed
    if any of its addresses is refused (a name mixing public and private addresses is refused whole)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not allowed(address):
            kind = "a cloud metadata address" if address in METADATA_ADDRESSES else "not public"
            raise AddressNotAllowed(f"address {address} of host {host!r} is {kind} "
                                    "(set NEWS_ALLOW_PRIVATE_ADDRESSES to allow)")
    return [(info[0], info[4]) for info in infos]


def _connect_vetted(conn: HTTPConnection) -> socket.socket:
    """The socket of a connection, opened to an address vetted by the policy in the same resolution: a DNS
    answer that changes between the check and the connect cannot slip a private address in. The Host header
    and TLS (SNI, certificate name) keep using the name, since urllib3 takes them from `conn.host`."""
    try:
        targets = _vetted_addresses(conn._dns_host, conn.port, conn.address_allowed)  # type: ignore[attr-defined]
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    last: OSError | None = None
    for family, sockaddr in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for level, name, value in conn.socket_options or ():
                sock.setsockopt(level, name, value)
            if conn.timeout is not None:
                sock.settimeout(conn.timeout)
            sock.connect(sockaddr)
            return sock
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeoutError(conn, f"Connection to {conn.host} timed out. "
                                            f"(connect timeout={conn.timeout})") from exc
        except OSError as exc:
            sock.close()
            last = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last}")


def _vetting_pool_classes(allowed: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections connect only to addresses `allowed` accepts."""
    class VettedHTTPConnection(HTTPConnection):
        address_allowed = staticmethod(allowed)
        _new_conn = _connect_vetted

    class VettedHTTPSConnection(HTTPSConnection):
        address_allowed = staticmethod(allowed)
        _new_conn = _connect_vetted

    class VettedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = VettedHTTPConnection

    class VettedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = VettedHTTPSConnection

    return {"http": VettedHTTPConnectionPool, "https": VettedHTTPSConnectionPool}


def sniff_binary(data: bytes) -> str | None:
    """What binary format the start of a body shows (a magic number, NUL or many control bytes), or None."""
    if data.startswith(TEXT_BOMS):
        return None
    for magic, name in BINARY_MAGIC:
        if data.startswith(magic):
            return name
    sample = data[:BINARY_SNIFF_BYTES]
    if b"\x00" in sample or len(BINARY_BYTES.findall(sample)) > BINARY_MAX_SHARE * len(sample):
        return "binary"
    return None


class HttpClient:
    """Fetches URLs politely and within bounds; errors come back as FetchResult, never as exceptions."""

    def __init__(self, settings: Settings, address_policy: AddressPolicy | None = None) -> None:
        """`address_policy` says which resolved addresses may be connected to (default: public ones only);
        with `allow_private_addresses` nothing is checked and no lookup is added."""
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
        if not settings.allow_private_addresses:
            # checked where the socket is opened, on every connection, so on every redirect hop too
            policy = address_policy or _policy(parse_networks(settings.allowed_networks))
            self._pool.pool_classes_by_scheme = _vetting_pool_classes(policy)
        self._base_headers = {"User-Agent": settings.identity, "Accept-Encoding": ACCEPT_ENCODING}

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
        content_types: tuple[str, ...] | None = None,
    ) -> FetchResult:
        """GET `url`, following redirects; conditional when validators are given.

        With `content_types` (PAGE_TYPES, FEED_TYPES), a response whose media type contains none of them, or
        whose body starts like a binary format, is refused (not retryable); a missing type is only sniffed.

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
            remaining = started + self._settings.total_timeout - time.monotonic()
            if remaining <= 0:
                return self._failure(url, current, None, f"took longer than {self._settings.total_timeout:g} s",
                                     started, retryable=True)
            timeout = urllib3.Timeout(connect=min(self._settings.connect_timeout, remaining),
                                      read=min(self._settings.read_timeout, remaining))
            try:
                response = self._pool.request(
                    "GET", current, headers=headers, redirect=False, preload_content=False, decode_content=False,
                    timeout=timeout,
                )
            except AddressNotAllowed as exc:
                return self._failure(url, current, None, str(exc), started, retryable=False)
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
                return self._read(url, current, response, started, keep_gzip, content_types)
            finally:
                if not response.isclosed() and response.length_remaining != 0:
                    # an unread body (redirect, error page, refused content) would be taken for the next
                    # response on this keep-alive connection: drop the connection instead
                    response.close()
                elif not response.isclosed():
                    # an empty body (a redirect or 304 with Content-Length 0) still has to be read to its end,
                    # else the pooled connection is not ready for the next request, which urllib3 then sends
                    # again on a new connection (the server sees it twice)
                    response.drain_conn()
                response.release_conn()
        return self._failure(url, current, None, f"more than {self._settings.max_redirects} redirects", started,
                             retryable=False)

    def _refusal(self, url: str) -> str | None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            return f"unsupported URL scheme {parts.scheme!r}"
        if not parts.hostname:
            return "URL has no host"
        return None

    def _read(self, url: str, final_url: str, response: urllib3.BaseHTTPResponse, started: float,
              keep_gzip: bool, content_types: tuple[str, ...] | None) -> FetchResult:
        kept = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
        if response.status == 304:
            return FetchResult(url, final_url, 304, kept, b"", time.monotonic() - started)
        if response.status >= 400:
            error = f"HTTP {response.status}"
            return self._failure(url, final_url, response.status, error, started,
                                 retryable=response.status in RETRYABLE_CODES, headers=kept)
        media_type = kept.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_types and media_type and not any(kind in media_type for kind in content_types):
            return self._failure(url, final_url, response.status,
                                 f"unexpected content type {media_type!r} (expected {' or '.join(content_types)})",
                                 started, retryable=False, headers=kept)
        # only what Accept-Encoding offered is decoded: a body in another coding (brotli, zstd, ...) is refused
        # unread, so whatever it would inflate to is never held
        codings = [part.strip().lower() for part in response.headers.get("Content-Encoding", "").split(",")]
        unoffered = [coding for coding in codings if coding not in OFFERED_CODINGS]
        if unoffered:
            return self._failure(url, final_url, response.status,
                                 f"content encoding {unoffered[0]!r} was not offered (Accept-Encoding: "
                                 f"{ACCEPT_ENCODING}): body not read", started, retryable=False, headers=kept)
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
            for chunk in _drip_safe_stream(response, gunzip is None, deadline, self._settings.read_timeout):
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
            if time.monotonic() >= deadline:  # the last wait was cut to the deadline and ran out
                return self._failure(url, final_url, response.status,
                                     f"took longer than {self._settings.total_timeout:g} s", started,
                                     retryable=True, headers=kept)
            return self._failure(url, final_url, response.status, f"reading body failed: {_reason(exc)}",
                                 started, retryable=True, headers=kept)
        if gunzip is not None and not gunzip.eof:
            return self._failure(url, final_url, response.status, "reading body failed: gzip body cut short",
                                 started, retryable=True, headers=kept)
        body = b"".join(chunks)
        if gunzip is not None and gunzip.unused_data:
            # bytes after the first gzip member (more members, or junk): keep what the server meant, decoded
            result = self._read_decoded(url, final_url, response.status, kept, decoded, gunzip.unused_data,
                                        started)
        elif gunzip is None:
            result = FetchResult(url, final_url, response.status, kept, body, time.monotonic() - started)
        else:
            result = FetchResult(url, final_url, response.status, kept, body, time.monotonic() - started,
                                 body_encoding="gzip", decoded=b"".join(decoded))
        binary = sniff_binary(result.content[:BINARY_SNIFF_BYTES]) if content_types and result.ok else None
        if binary:
            return self._failure(url, final_url, response.status,
                                 f"binary content ({binary}) served as {media_type or 'no content type'}", started,
                                 retryable=False, headers=kept)
        return result

    def _read_decoded(self, url: str, final_url: str, status: int, kept: dict[str, str], decoded: list[bytes],
                      rest: bytes, started: float) -> FetchResult:
        """A gzip body with bytes after its first member (already in `decoded`): the members that follow are
        decoded too, within the cap, and junk after a complete member is ignored, as browsers do."""
        cap = self._settings.max_bytes
        size = sum(map(len, decoded))
        while rest and size <= cap:
            member = zlib.decompressobj(GZIP_WBITS)
            try:
                size += _inflate(member, rest, cap - size, decoded)
            except zlib.error:
                break
            if not member.eof:
                break
            rest = member.unused_data
        if size > cap:
            return self._failure(url, final_url, status, f"body too large: over {cap} bytes", started,
                                 retryable=False, headers=kept)
        return FetchResult(url, final_url, status, kept, b"".join(decoded), time.monotonic() - started)

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


def _drip_safe_stream(response: urllib3.BaseHTTPResponse, decode: bool, deadline: float,
                      read_timeout: float) -> Iterator[bytes]:
    """The body as it arrives, one socket read at a time, each allowed to wait only until `deadline`: a
    server dripping a byte now and then cannot hold a fetch past the total timeout (a plain read(n) keeps
    receiving until it has n bytes, and the socket timeout only bounds each wait)."""
    sock = getattr(response.connection, "sock", None)
    while True:
        if sock is not None:
            try:
                sock.settimeout(max(0.001, min(read_timeout, deadline - time.monotonic())))
            except OSError:  # closed once the whole body was in: nothing is left to wait for
                sock = None
        data = response.read1(CHUNK_SIZE, decode_content=decode)
        if not data:
            return
        yield data


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

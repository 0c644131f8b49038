"""Sitemap bytes (urlset, index, gzip, plain text) to dated entries, and backfill reads over our HTTP client.

From trafilatura.sitemaps we use `extract_robots_sitemaps`, which reads robots.txt text we fetched ourselves.
Not used: `sitemap_search` and `SitemapObject`, which download with trafilatura's own fetcher (bypassing our
address checks and size caps), keep only <loc> (no lastmod, no news:publication_date) and parse in lxml's
recover mode only, which hides bad input; `is_plausible_sitemap`, since the parsed root element says more; nor
courlan's `is_valid_url`, which refuses hosts under five characters (t.co). Locations are kept as given:
canonical URLs are dedupe's business.
"""

from __future__ import annotations

import codecs
import logging
import re
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

from lxml import etree
from trafilatura.sitemaps import extract_robots_sitemaps

from pipeline.http import GZIP_WBITS
from pipeline.models import FeedEntry, FetchResult

LOGGER = logging.getLogger(__name__)

SITEMAP_ACCEPT = "application/xml, text/xml;q=0.9, application/gzip;q=0.8, text/plain;q=0.7, */*;q=0.5"
# the sitemap protocol's own limits: 50 MiB uncompressed, 50,000 URLs per file, URLs under 2,048 characters
MAX_SITEMAP_BYTES = 50 * 1024 * 1024
MAX_URLS = 50_000
MAX_URL_LENGTH = 2048
MAX_DOCUMENTS = 50
GZIP_MAGIC = b"\x1f\x8b"
INFLATE_CHUNK = 1024 * 1024
# byte order marks of UTF-16 and UTF-32 (the little-endian UTF-16 one starts the UTF-32 one)
WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
# how an XML document starts in UTF-8, UTF-16 and UTF-32 (either byte order) without a byte order mark
XML_STARTS = (b"<", b"\x00<", b"\x00\x00\x00<")
# an internal DTD subset declaring entities, in every encoding XML parsers detect on their own
ENTITY_MARKERS = tuple("<!ENTITY".encode(encoding)
                       for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"))
ENTITY_REFUSAL = "refused: the document declares XML entities (entity expansion is not allowed in sitemaps)"
# W3C datetime forms that datetime.fromisoformat does not take as they are: a year, a year and month
W3C_PARTIAL_DATE_RE = re.compile(r"(\d{4})(?:-(\d{2}))?")
ITEM_NAMES = {"urlset": "url", "sitemapindex": "sitemap"}
SAFE_PARSER = dict(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


class Fetcher(Protocol):
    """What reads sitemaps: our HttpClient, or one that makes its fetches wait for their host's turn."""

    def get(self, url: str, *, accept: str) -> FetchResult: ...


@dataclass(frozen=True)
class ParsedSitemap:
    """One sitemap document: the pages it lists (urlset, text) or the sitemaps it points to (index)."""

    entries: list[FeedEntry]
    sitemaps: list[tuple[str, datetime | None]]
    kind: str | None = None  # "urlset", "sitemapindex" or "text"; None when unusable
    bozo: bool = False
    bozo_reason: str | None = None
    skipped: int = 0  # locations dropped: relative, not http(s), too long, or past the URL limit
    error: str | None = None


@dataclass(frozen=True)
class SitemapDocument:
    """What became of one sitemap document a read fetched, for the caller to record."""

    url: str
    status: int | None
    error: str | None = None
    bozo_reason: str | None = None
    urls: int = 0
    sitemaps: int = 0


@dataclass(frozen=True)
class SitemapResult:
    """The entries a sitemap read kept for an interval, and how each document fared."""

    entries: list[FeedEntry]
    documents: list[SitemapDocument]
    fetches: list[FetchResult] = field(repr=False)  # every response, raw bytes included, for archiving
    not_followed: list[tuple[str, str]] = field(default_factory=list)  # (child sitemap URL, why)
    listed: int = 0  # URLs the documents listed, before the interval filter
    undated: int = 0  # URLs without a date (kept only with keep_undated)

    @property
    def failed(self) -> list[SitemapDocument]:
        return [document for document in self.documents if document.error]


def parse_sitemap(body: bytes, headers: Mapping[str, str], url: str, *,
                  max_bytes: int = MAX_SITEMAP_BYTES) -> ParsedSitemap:
    """Parse a sitemap document already fetched from `url` (XML urlset or index, gzip-compressed or not, or
    plain text); never touches the network. Entries have no guid, so they are keyed by their canonical URL."""
    parsed = _parse(body, headers, max_bytes)
    if parsed.bozo:
        LOGGER.debug("sitemap %s: %s", url, parsed.bozo_reason)
    return parsed


def _parse(body: bytes, headers: Mapping[str, str], max_bytes: int) -> ParsedSitemap:
    if body.startswith(GZIP_MAGIC):
        body, error = _gunzip(body, max_bytes)
        if error:
            return _unusable(error)
    if len(body) > max_bytes:
        return _unusable(f"refused: over {max_bytes} bytes, the sitemap limit")
    if not body.strip():
        return _unusable("empty document")
    if any(marker in body for marker in ENTITY_MARKERS):
        # entity expansion is how XML bombs grow (and external entities read files); no sitemap needs them
        return _unusable(ENTITY_REFUSAL)
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(XML_STARTS) or body.startswith(WIDE_BOMS):
        return _parse_xml(body, headers)
    return _parse_text(body, headers)


def sitemaps_from_robots(body: bytes, base_url: str = "") -> list[str]:
    """The sitemap URLs a robots.txt declares (`Sitemap:` lines), resolved against `base_url` when given;
    only absolute http(s) URLs are returned."""
    text = body.decode("utf-8", errors="replace")
    # trafilatura ignores files over 10,000 characters (it guards against HTML served after redirects, which
    # our client's checks cover): hand it the Sitemap lines alone, so a long robots.txt still counts
    lines = "\n".join(line for line in text.splitlines() if line.lstrip().lower().startswith("sitemap"))
    return [found for candidate in extract_robots_sitemaps(lines, base_url)
            if (found := _http_url(candidate)) is not None]


def read_sitemaps(
    client: Fetcher,
    url: str,
    since: datetime,
    until: datetime,
    *,
    max_documents: int = MAX_DOCUMENTS,
    accept: str = SITEMAP_ACCEPT,
    keep_undated: bool = False,
    max_bytes: int = MAX_SITEMAP_BYTES,
) -> SitemapResult:
    """Fetch a sitemap or sitemap index with our client and keep the entries dated in [since, until).

    An index's children are followed, breadth first, unless their lastmod is before `since` (they cannot
    list anything newer); at most `max_documents` documents are fetched. A document that fails is recorded
    and the others are still read. Undated entries cannot be placed in the interval: dropped unless
    `keep_undated`. The same URL listed twice is kept once.
    """
    queue = deque([url])
    seen = {url}
    kept: dict[str, FeedEntry] = {}
    documents: list[SitemapDocument] = []
    fetches: list[FetchResult] = []
    not_followed: list[tuple[str, str]] = []
    listed = undated = 0
    while queue:
        if len(fetches) >= max_documents:
            not_followed += [(left, f"over the limit of {max_documents} documents") for left in queue]
            break
        current = queue.popleft()
        result = client.get(current, accept=accept)
        fetches.append(result)
        if not result.ok:
            LOGGER.info("sitemap %s not read: %s", current, result.error)
            documents.append(SitemapDocument(current, result.status, result.error))
            continue
        parsed = parse_sitemap(result.content, result.headers, result.final_url, max_bytes=max_bytes)
        documents.append(SitemapDocument(current, result.status, parsed.error, parsed.bozo_reason,
                                         urls=len(parsed.entries), sitemaps=len(parsed.sitemaps)))
        if parsed.error:
            LOGGER.info("sitemap %s not usable: %s", current, parsed.error)
            continue
        if parsed.bozo:
            LOGGER.warning("sitemap %s partly unusable: %s", current, parsed.bozo_reason)
        listed += len(parsed.entries)
        for entry in parsed.entries:
            if entry.published_at is None:
                undated += 1
                if not keep_undated:
                    continue
            elif not since <= entry.published_at < until:
                continue
            kept.setdefault(entry.url, entry)
        for child, lastmod in parsed.sitemaps:
            if child in seen:
                continue
            seen.add(child)
            if lastmod is not None and lastmod < since:
                not_followed.append((child, f"last modified {lastmod.isoformat()}, before the interval"))
            else:
                queue.append(child)
    return SitemapResult(list(kept.values()), documents, fetches, not_followed, listed, undated)


def parse_w3c_datetime(value: str | None) -> datetime | None:
    """A W3C datetime (a year, year-month, date, or date and time with a zone) in UTC; None if unreadable.
    A time without a zone is taken as UTC."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        partial = W3C_PARTIAL_DATE_RE.fullmatch(text)
        moment = (datetime(int(partial[1]), int(partial[2] or 1), 1) if partial
                  else datetime.fromisoformat(text.upper()))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _unusable(error: str) -> ParsedSitemap:
    return ParsedSitemap(entries=[], sitemaps=[], bozo=True, bozo_reason=error, error=error)


def _gunzip(body: bytes, max_bytes: int) -> tuple[bytes, str | None]:
    """Inflate a gzip sitemap (its first member; bytes after it are ignored). A tiny file can inflate to
    gigabytes, so it is first inflated a chunk at a time and thrown away, only to measure it: a bomb is
    refused holding one chunk, and only a file within `max_bytes` is inflated for real."""
    measure = zlib.decompressobj(GZIP_WBITS)
    size = 0
    data = body
    try:
        while data and size <= max_bytes and not measure.eof:
            size += len(measure.decompress(data, INFLATE_CHUNK))
            data = measure.unconsumed_tail
    except zlib.error as exc:
        return b"", f"not a valid gzip file: {exc}"
    if size > max_bytes:
        return b"", f"refused: the gzip file inflates past {max_bytes} bytes, the sitemap limit"
    if not measure.eof:
        return b"", "not a valid gzip file: cut short"
    return zlib.decompressobj(GZIP_WBITS).decompress(body), None


def _parse_xml(body: bytes, headers: Mapping[str, str]) -> ParsedSitemap:
    bozo_reason = None
    try:
        root = etree.fromstring(body, etree.XMLParser(**SAFE_PARSER))
    except etree.XMLSyntaxError as exc:
        # keep what comes before the damage (a cut-short download, a stray byte), flagged as feeds are
        bozo_reason = f"not well-formed XML: {exc}"
        try:
            root = etree.fromstring(body, etree.XMLParser(recover=True, **SAFE_PARSER))
        except etree.XMLSyntaxError:
            root = None
    if root is None:
        return _unusable(bozo_reason or "not well-formed XML")
    kind = _local_name(root)
    if kind not in ("urlset", "sitemapindex"):
        media_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "").split(";", 1)[0].strip()
        return _unusable(f"not a sitemap: root element <{kind}>" + (f" ({media_type})" if media_type else ""))
    entries: list[FeedEntry] = []
    sitemaps: list[tuple[str, datetime | None]] = []
    reasons = [bozo_reason] if bozo_reason else []
    items = [element for element in root if _local_name(element) == ITEM_NAMES[kind]]
    over_limit = max(0, len(items) - MAX_URLS)
    if over_limit:
        reasons.append(f"more than {MAX_URLS} entries: the rest were ignored")
    dropped = unreadable_dates = 0
    for element in items[:MAX_URLS]:
        fields = {_local_name(child): child for child in element}
        location = _http_url(_text(fields.get("loc")))
        if location is None:
            dropped += 1
            continue
        news = fields.get("news")
        news_fields = {_local_name(child): child for child in news} if news is not None else {}
        lastmod_text, published_text = _text(fields.get("lastmod")), _text(news_fields.get("publication_date"))
        lastmod, published = parse_w3c_datetime(lastmod_text), parse_w3c_datetime(published_text)
        unreadable_dates += _unreadable(lastmod_text, lastmod) + _unreadable(published_text, published)
        if kind == "sitemapindex":
            sitemaps.append((location, lastmod))
        else:
            entries.append(FeedEntry(url=location, guid=None, title=_clean(_text(news_fields.get("title"))),
                                     author=None, published_at=published or lastmod))
    if dropped:
        reasons.append(f"{dropped} locations dropped (relative, not http(s), or over {MAX_URL_LENGTH} characters)")
    if unreadable_dates:
        reasons.append(f"{unreadable_dates} dates are not W3C datetimes")
    reason = "; ".join(reasons) or None
    if reason and not entries and not sitemaps:
        return _unusable(f"not a usable sitemap: {reason}")
    return ParsedSitemap(entries=entries, sitemaps=sitemaps, kind=kind, bozo=reason is not None,
                         bozo_reason=reason, skipped=over_limit + dropped)


def _parse_text(body: bytes, headers: Mapping[str, str]) -> ParsedSitemap:
    """A text sitemap: one absolute URL per line, UTF-8 unless the Content-Type says otherwise."""
    charset = _charset(headers)
    text = body.decode("utf-8-sig" if charset == "utf-8" else charset, errors="replace")
    entries: list[FeedEntry] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        location = _http_url(line)
        if location is None or len(entries) >= MAX_URLS:
            skipped += 1
        else:
            entries.append(FeedEntry(url=location, guid=None, title=None, author=None, published_at=None))
    if not entries:
        return _unusable("not a sitemap: no line is an absolute http(s) URL")
    reason = f"{skipped} lines are not usable URLs (or are past {MAX_URLS})" if skipped else None
    return ParsedSitemap(entries=entries, sitemaps=[], kind="text", bozo=skipped > 0, bozo_reason=reason,
                         skipped=skipped)


def _charset(headers: Mapping[str, str]) -> str:
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type, re.IGNORECASE)
    if match:
        try:
            return codecs.lookup(match.group(1)).name
        except LookupError:
            pass
    return "utf-8"


def _http_url(value: str | None) -> str | None:
    """An absolute http(s) URL as given, or None for relative, other-scheme, malformed or overlong ones."""
    url = (value or "").replace("\x00", "").strip()
    if not url or len(url) > MAX_URL_LENGTH or any(character.isspace() for character in url):
        return None
    try:
        parts = urlsplit(url)
        has_host = bool(parts.hostname) and (parts.port or 0) >= 0  # .port raises for a port out of range
    except ValueError:
        return None
    return url if has_host and parts.scheme.lower() in ("http", "https") else None


def _local_name(element: etree._Element) -> str:
    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def _unreadable(text: str | None, moment: datetime | None) -> int:
    """1 when a date was given but could not be read, else 0."""
    return int(bool(text and text.strip()) and moment is None)


def _text(element: etree._Element | None) -> str | None:
    return element.text if element is not None else None


def _clean(value: str | None) -> str | None:
    """Text as PostgreSQL can store it: NUL characters removed, surrounding space stripped; empty is None."""
    return value.replace("\x00", "").strip() or None if value else None

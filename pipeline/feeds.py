"""Feed bytes and OPML files to entries; malformed input is reported, not raised."""

from __future__ import annotations

import calendar
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urljoin

import feedparser
from lxml import etree

from pipeline.charset import utf8_text
from pipeline.models import FeedEntry, ParsedFeed

LOGGER = logging.getLogger(__name__)

FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.5"
# an internal DTD subset declaring entities, in the encodings a feed may come in
ENTITY_MARKERS = tuple("<!ENTITY".encode(encoding) for encoding in ("utf-8", "utf-16-le", "utf-16-be"))
ENTITY_REFUSAL = "refused: the document declares XML entities (entity expansion is not allowed in feeds)"
BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
XML_DECLARATION_RE = re.compile(r"\s*<\?xml[^>]*\?>")
XML_ENCODING_RE = re.compile(r"""(encoding\s*=\s*["'])[^"']*(["'])""")
# feedparser flags these for documents that parse fine; they are not worth a warning
HARMLESS_BOZO = (feedparser.CharacterEncodingOverride,)


def parse_feed(body: bytes, headers: dict[str, str], feed_url: str) -> ParsedFeed:
    """Parse an RSS or Atom document already fetched; never touches the network."""
    if not body.strip():
        return ParsedFeed(title=None, entries=[], bozo=True, bozo_reason="empty document", error="empty document")
    if any(marker in body for marker in ENTITY_MARKERS):
        # entity expansion is how XML bombs grow (and external entities read files); no feed needs them
        return ParsedFeed(title=None, entries=[], bozo=True, bozo_reason=ENTITY_REFUSAL, error=ENTITY_REFUSAL)
    headers = {k.lower(): v for k, v in headers.items()}
    body, headers = _as_utf8_when_it_is(body, headers)
    parsed = feedparser.parse(body, response_headers=headers, sanitize_html=False, resolve_relative_uris=False)
    bozo_exception = parsed.get("bozo_exception")
    bozo = bool(parsed.get("bozo")) and not isinstance(bozo_exception, HARMLESS_BOZO)
    reason = f"{type(bozo_exception).__name__}: {bozo_exception}" if bozo and bozo_exception else None
    entries: list[FeedEntry] = []
    skipped = 0
    base = parsed.get("href") or feed_url
    for item in parsed.entries:
        entry = _entry(item, base)
        if entry is None:
            skipped += 1
        else:
            entries.append(entry)
    title = parsed.feed.get("title") if parsed.get("feed") else None
    error = None
    if not entries and bozo:
        error = f"not a usable feed: {reason}"
    elif not entries and not parsed.get("version"):
        error = "not a feed: no RSS or Atom structure found"
    return ParsedFeed(title=title, entries=entries, bozo=bozo, bozo_reason=reason, skipped=skipped, error=error)


def _as_utf8_when_it_is(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A feed that is UTF-8 in fact, whatever its header or XML declaration says, relabelled as UTF-8 (a few
    invalid bytes become U+FFFD); feedparser would otherwise believe a wrong label, or fall back to
    windows-1252 for the whole document, and store mojibake. Other feeds are left to feedparser."""
    if body.startswith(BOMS) or body.isascii():
        return body, headers
    text = utf8_text(body)
    if text is None:
        return body, headers
    declaration = XML_DECLARATION_RE.match(text)
    if declaration:
        text = XML_ENCODING_RE.sub(r"\1utf-8\2", declaration.group(0), count=1) + text[declaration.end():]
    media_type = headers.get("content-type", "application/xml").split(";", 1)[0]
    return text.encode("utf-8"), {**headers, "content-type": f"{media_type}; charset=utf-8"}


def _entry(item: feedparser.FeedParserDict, base: str) -> FeedEntry | None:
    link = item.get("link")
    if not link:
        for candidate in item.get("links", []):
            if candidate.get("rel", "alternate") == "alternate" and candidate.get("href"):
                link = candidate["href"]
                break
    if not link:
        return None
    link = urljoin(base, link.strip())
    if not link.lower().startswith(("http://", "https://")):
        return None
    author = item.get("author") or None
    if not author and item.get("authors"):
        author = item["authors"][0].get("name") or None
    return FeedEntry(
        url=_clean(link),
        guid=_clean(item.get("id")),
        title=_clean(item.get("title")),
        author=_clean(author),
        published_at=_entry_time(item),
        summary=_clean(item.get("summary")),
    )


def _clean(value: str | None) -> str | None:
    """Text as PostgreSQL can store it: NUL characters (which it refuses) removed; empty becomes None."""
    return value.replace("\x00", "") or None if value else None


def _entry_time(item: feedparser.FeedParserDict) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = item.get(key)
        if value:
            return datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
    return None


def in_window(entry: FeedEntry, since: datetime, until: datetime) -> bool:
    """Whether a run over [since, until) keeps this entry; undated entries are always kept."""
    return entry.published_at is None or since <= entry.published_at < until


@dataclass(frozen=True)
class OpmlFeed:
    """One feed listed in an OPML subscription file."""

    url: str
    title: str | None
    source: str | None
    homepage: str | None


class OpmlError(ValueError):
    """The OPML file cannot be read."""


def parse_opml(data: bytes) -> list[OpmlFeed]:
    """Feeds listed in an OPML document; a parent outline's text names the source (outlet)."""
    if b"<!ENTITY" in data:
        # entity expansion is how XML bombs grow; a subscription list never needs it
        raise OpmlError("entity declarations are not allowed in OPML files")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise OpmlError(f"not well-formed XML: {exc}") from None
    if root.tag != "opml":
        raise OpmlError(f"root element is <{root.tag}>, expected <opml>")
    found: list[OpmlFeed] = []
    for outline in root.iter("outline"):
        url = outline.get("xmlUrl")
        if not url:
            continue
        parent = outline.getparent()
        group = parent.get("text") or parent.get("title") if parent is not None and parent.tag == "outline" else None
        found.append(OpmlFeed(
            url=url.strip(),
            title=outline.get("title") or outline.get("text"),
            source=outline.get("source") or group or outline.get("title") or outline.get("text"),
            homepage=outline.get("htmlUrl"),
        ))
    return found

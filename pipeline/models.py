"""Records passed between pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class FetchResult:
    """What one HTTP fetch produced: a body, or the reason there is none."""

    url: str
    final_url: str
    status: int | None
    headers: dict[str, str]
    body: bytes
    elapsed: float
    error: str | None = None
    retryable: bool = False
    # "gzip" when `body` is kept as the server compressed it (checked to decompress within the size cap)
    body_encoding: str = "identity"
    # the decompressed bytes of a body kept gzip-encoded, for extraction in this run (never stored)
    decoded: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def content(self) -> bytes:
        """The body as the page is: decompressed."""
        return self.body if self.decoded is None else self.decoded

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FeedEntry:
    """One item of an RSS or Atom feed, as the feed describes it."""

    url: str
    guid: str | None
    title: str | None
    author: str | None
    published_at: datetime | None
    summary: str | None = None


@dataclass(frozen=True)
class ParsedFeed:
    """A feed document turned into entries; malformed input is flagged, not raised."""

    title: str | None
    entries: list[FeedEntry]
    bozo: bool = False
    bozo_reason: str | None = None
    skipped: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Extraction:
    """Body and metadata that trafilatura found in one page; `error` says why there is no body."""

    body: str
    title: str | None = None
    author: str | None = None
    published: str | None = None
    sitename: str | None = None
    language: str | None = None
    canonical_url: str | None = None
    description: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class TopicHit:
    """One topic assigned to a text, with the score and the evidence that earned it."""

    topic_id: str
    label: str
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Article:
    """An article ready to load: cleaned body, metadata, dedup keys and topics."""

    canonical_url: str
    url: str
    title: str | None
    author: str | None
    published_at: datetime | None
    language: str | None
    source: str
    body: str
    word_count: int
    content_hash: str
    source_id: int | None = None
    topics: list[TopicHit] = field(default_factory=list)

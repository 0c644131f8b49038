"""Bookkeeping rows: sources, feeds, runs, feed polls, the entry work queue and fetched pages."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from pipeline import archive
from pipeline.dedupe import canonical_url
from pipeline.models import FeedEntry, FetchResult

LOGGER = logging.getLogger(__name__)

RUN_COUNTERS = (
    "feeds_polled", "feeds_failed", "entries_seen", "entries_new", "pages_fetched", "pages_failed",
    "extraction_failures", "duplicates", "loaded", "tagged", "replayed", "unchanged", "retagged",
)
RUN_TIMERS = ("fetch_seconds", "extract_seconds", "tag_seconds", "load_seconds")


@dataclass(frozen=True)
class FeedRow:
    id: int
    url: str
    source: str
    title: str | None
    enabled: bool
    etag: str | None
    last_modified: str | None
    last_status: str | None
    last_http_status: int | None
    last_error: str | None
    last_polled_at: datetime | None
    disabled_reason: str | None = None
    consecutive_failures: int = 0
    next_poll_at: datetime | None = None
    poll_interval_seconds: int | None = None
    due: bool = True  # whether its next poll time has come, by the database's clock
    kind: str = "feed"  # or "sitemap": a news sitemap (or index) read for the interval's items
    body_sha256: str | None = None  # of the last body parsed: the same bytes again are not parsed again

    @property
    def health(self) -> str:
        """As the feed_health view says it: disabled, never polled, failing, malformed or ok."""
        if not self.enabled:
            return "disabled"
        if self.last_polled_at is None:
            return "never polled"
        if self.consecutive_failures:
            return "failing"
        return "malformed" if self.last_status == "malformed" else "ok"


@dataclass(frozen=True)
class PendingEntry:
    """A feed entry whose page is wanted, with what its feed said (so its page can go to extraction as is)."""

    id: int
    url: str
    title: str | None = None
    author: str | None = None
    published_at: datetime | None = None
    source: str = ""
    source_id: int = 0


@dataclass(frozen=True)
class FetchedPage:
    """A fetched page waiting for extraction, with what its feed entry said about it."""

    entry_id: int
    entry_url: str
    final_url: str
    title: str | None
    author: str | None
    published_at: datetime | None
    source: str
    source_id: int
    content_type: str | None
    body: bytes
    unreadable: str | None = None  # why the stored bytes could not be read back, if they could not


def upsert_source(conn: Connection, name: str, homepage: str | None = None) -> int:
    row = conn.execute(text(
        "INSERT INTO sources (name, homepage) VALUES (:name, :homepage) "
        "ON CONFLICT (name) DO UPDATE SET homepage = COALESCE(excluded.homepage, sources.homepage), "
        "  updated_at = CASE WHEN sources.homepage IS DISTINCT FROM COALESCE(excluded.homepage, sources.homepage)"
        "                    THEN now() ELSE sources.updated_at END "
        "RETURNING id"
    ), {"name": name, "homepage": homepage}).one()
    return int(row.id)


def upsert_feed(conn: Connection, url: str, source_id: int, title: str | None = None, kind: str = "feed"
                ) -> tuple[int, bool]:
    """Register a feed, or a news sitemap with kind "sitemap" (or refresh its source, title and kind); returns
    (id, created)."""
    row = conn.execute(text(
        "INSERT INTO feeds (url, source_id, title, kind) VALUES (:url, :source_id, :title, :kind) "
        "ON CONFLICT (url) DO UPDATE SET source_id = excluded.source_id, "
        "  title = COALESCE(excluded.title, feeds.title), kind = excluded.kind, updated_at = now() "
        "RETURNING id, (xmax = 0) AS created"
    ), {"url": url, "source_id": source_id, "title": title, "kind": kind}).one()
    return int(row.id), bool(row.created)


def set_feed_enabled(conn: Connection, url: str, enabled: bool, reason: str | None = None) -> bool:
    """Start or stop polling a feed; disabling records `reason` (shown in feed_health), enabling clears it and
    the failure streak, so the next run polls the feed."""
    result = conn.execute(text(
        "UPDATE feeds SET enabled = :enabled, updated_at = now(), "
        "  disabled_reason = CASE WHEN :enabled THEN NULL ELSE :reason END, "
        "  disabled_at = CASE WHEN :enabled THEN NULL WHEN enabled THEN now() ELSE disabled_at END, "
        # enabling starts afresh: no failure streak, polled by the next run
        "  consecutive_failures = CASE WHEN :enabled THEN 0 ELSE consecutive_failures END, "
        "  next_poll_at = CASE WHEN :enabled THEN NULL ELSE next_poll_at END "
        "WHERE url = :url"
    ), {"enabled": enabled, "url": url, "reason": reason})
    return result.rowcount > 0


def list_feeds(conn: Connection, *, enabled_only: bool = False, ids: Sequence[int] | None = None) -> list[FeedRow]:
    clauses = []
    params: dict[str, Any] = {}
    if enabled_only:
        clauses.append("f.enabled")
    if ids is not None:
        clauses.append("f.id = ANY(:ids)")
        params["ids"] = list(ids)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(text(
        "SELECT f.id, f.url, s.name AS source, f.title, f.enabled, f.etag, f.last_modified, f.last_status, "
        "       f.last_http_status, f.last_error, f.last_polled_at, f.disabled_reason, f.consecutive_failures, "
        "       f.next_poll_at, f.poll_interval_seconds, f.kind, f.body_sha256, "
        # a minute of slack: a run starting a little before the hour still polls a feed due on the hour
        "       (f.next_poll_at IS NULL OR f.next_poll_at <= now() + interval '1 minute') AS due "
        f"FROM feeds f JOIN sources s ON s.id = f.source_id {where} ORDER BY f.id"
    ), params)
    return [FeedRow(**row._mapping) for row in rows]


def start_run(conn: Connection, run_key: str, trigger: str, since: datetime, until: datetime, *,
              mode: str = "live", run_type: str | None = None, extractor_version: str | None = None,
              taxonomy_version: str | None = None) -> int:
    """Open (or reopen, when a run is retried or re-run) the ingest_runs row of one run; returns its id."""
    row = conn.execute(text(
        "INSERT INTO ingest_runs (run_key, trigger, interval_start, interval_end, mode, run_type, extractor_version, "
        "  taxonomy_version) "
        "VALUES (:run_key, :trigger, :since, :until, :mode, :run_type, :extractor_version, :taxonomy_version) "
        "ON CONFLICT (run_key) DO UPDATE SET status = 'running', started_at = now(), "
        "  interval_start = excluded.interval_start, "
        "  interval_end = excluded.interval_end, finished_at = NULL, error = NULL, mode = excluded.mode, "
        "  run_type = excluded.run_type, extractor_version = excluded.extractor_version, "
        "  taxonomy_version = excluded.taxonomy_version "
        "RETURNING id"
    ), {"run_key": run_key, "trigger": trigger, "since": since, "until": until, "mode": mode, "run_type": run_type,
        "extractor_version": extractor_version, "taxonomy_version": taxonomy_version}).one()
    return int(row.id)


def rows_of_run(conn: Connection, run_id: int) -> dict[str, int]:
    """The run's counts as its rows say them: what every try of every task wrote since the run (re)started,
    including tries that failed after committing part of their work (which the tasks' own counts miss). A run
    cleared and run again counts only what it changed the second time."""
    row = conn.execute(text(
        "WITH run AS (SELECT id, started_at FROM ingest_runs WHERE id = :run_id) "
        "SELECT "
        "  (SELECT count(*) FROM feed_fetches f, run WHERE f.run_id = run.id AND f.fetched_at >= run.started_at) "
        "    AS feeds_polled, "
        "  (SELECT count(*) FROM feed_fetches f, run WHERE f.run_id = run.id AND f.fetched_at >= run.started_at "
        "    AND f.status = 'failed') AS feeds_failed, "
        "  (SELECT coalesce(sum(f.items), 0) FROM feed_fetches f, run WHERE f.run_id = run.id "
        "    AND f.fetched_at >= run.started_at) AS entries_seen, "
        "  (SELECT count(*) FROM feed_entries e, run WHERE e.first_run_id = run.id "
        "    AND e.created_at >= run.started_at) AS entries_new, "
        "  (SELECT count(*) FROM pages p, run WHERE p.run_id = run.id AND p.fetched_at >= run.started_at) "
        "    AS pages_fetched, "
        "  (SELECT count(*) FROM feed_entries e, run WHERE e.last_run_id = run.id AND e.updated_at >= run.started_at "
        "    AND e.status = 'page_failed') AS pages_failed, "
        "  (SELECT count(*) FROM feed_entries e, run WHERE e.last_run_id = run.id AND e.updated_at >= run.started_at "
        "    AND e.status = 'extract_failed') AS extraction_failures, "
        "  (SELECT count(*) FROM feed_entries e, run WHERE e.last_run_id = run.id AND e.updated_at >= run.started_at "
        "    AND e.status = 'duplicate') AS duplicates, "
        "  (SELECT count(*) FROM articles a, run WHERE a.last_run_id = run.id AND a.updated_at >= run.started_at) "
        "    AS loaded, "
        "  (SELECT count(*) FROM articles a, run WHERE a.last_run_id = run.id AND a.updated_at >= run.started_at "
        "    AND EXISTS (SELECT 1 FROM article_topics AS t WHERE t.article_id = a.id)) AS tagged"
    ), {"run_id": run_id}).one()
    return {name: int(value) for name, value in row._mapping.items()}


def finish_run(conn: Connection, run_id: int, counts: dict[str, float], status: str, error: str | None) -> None:
    """Write the run's totals (a retried or re-run run overwrites them)."""
    values = {name: int(counts.get(name, 0)) for name in RUN_COUNTERS}
    values.update({name: float(counts.get(name, 0.0)) for name in RUN_TIMERS})
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    conn.execute(text(
        f"UPDATE ingest_runs SET {assignments}, status = :status, error = :error, finished_at = now() "
        "WHERE id = :run_id"
    ), {**values, "status": status, "error": error, "run_id": run_id})


def record_feed_poll(
    conn: Connection,
    run_id: int,
    feed_id: int,
    *,
    status: str,
    result: FetchResult,
    items: int,
    items_in_window: int,
    error: str | None,
    next_poll_in: timedelta = timedelta(0),
    poll_interval: timedelta | None = None,
) -> int:
    """One feed_fetches row per feed and run (a retried task overwrites it) and the feed's last status, failure
    streak and next poll time (`next_poll_in` from now; `poll_interval` kept as its interval after a success).
    The document the server sent, if any, is archived with the poll. Returns the feed's consecutive failed polls."""
    blob = archive.blob_of(result) if result.ok and result.status == 200 and result.content else None
    if blob is not None:
        archive.store_blobs(conn, [blob])
    params = {
        "next_poll_in": next_poll_in,
        "interval_seconds": None if poll_interval is None else int(poll_interval.total_seconds()),
        "run_id": run_id, "feed_id": feed_id, "status": status, "http_status": result.status,
        "items": items, "in_window": items_in_window, "duration_ms": int(result.elapsed * 1000), "error": error,
        "etag": result.headers.get("etag"), "last_modified": result.headers.get("last-modified"),
        "url": result.url, "final_url": result.final_url, "headers": json.dumps(archive.kept_headers(result.headers)),
        "sha256": blob.sha256 if blob else None,
    }
    conn.execute(text(
        "INSERT INTO feed_fetches (run_id, feed_id, status, http_status, items, items_in_window, duration_ms, error, "
        "  url, final_url, headers, sha256) "
        "VALUES (:run_id, :feed_id, :status, :http_status, :items, :in_window, :duration_ms, :error, :url, "
        "  :final_url, CAST(:headers AS jsonb), :sha256) "
        "ON CONFLICT (run_id, feed_id) DO UPDATE SET fetched_at = now(), status = excluded.status, "
        "  http_status = excluded.http_status, items = excluded.items, items_in_window = excluded.items_in_window, "
        "  duration_ms = excluded.duration_ms, error = excluded.error, url = excluded.url, "
        "  final_url = excluded.final_url, headers = excluded.headers, sha256 = excluded.sha256"
    ), params)
    return conn.execute(text(
        "UPDATE feeds SET last_status = :status, last_http_status = :http_status, last_error = :error, "
        "  last_polled_at = now(), updated_at = now(), "
        "  last_success_at = CASE WHEN :status IN ('ok', 'not_modified', 'malformed') THEN now() "
        "                         ELSE last_success_at END, "
        "  etag = CASE WHEN :status = 'ok' THEN :etag ELSE etag END, "
        "  last_modified = CASE WHEN :status = 'ok' THEN :last_modified ELSE last_modified END, "
        "  consecutive_failures = CASE WHEN :status = 'failed' THEN consecutive_failures + 1 ELSE 0 END, "
        "  next_poll_at = now() + CAST(:next_poll_in AS interval), "
        "  poll_interval_seconds = COALESCE(CAST(:interval_seconds AS integer), poll_interval_seconds) "
        "WHERE id = :feed_id RETURNING consecutive_failures"
    ), params).scalar_one()


def record_feed_body(conn: Connection, feed_id: int, body_sha256: str) -> None:
    """Keep the hash of the feed body just parsed, so that a later poll answered with the same bytes is taken
    as not modified even when the server's validators say otherwise."""
    conn.execute(text("UPDATE feeds SET body_sha256 = :digest WHERE id = :feed_id"),
                 {"digest": body_sha256, "feed_id": feed_id})


def entry_key(entry: FeedEntry) -> str:
    """What identifies an item within its feed: the guid when the feed gives one, else the normalised link."""
    return entry.guid.strip() if entry.guid and entry.guid.strip() else canonical_url(entry.url)


def upsert_entries(conn: Connection, feed_id: int, run_id: int, entries: Iterable[FeedEntry]) -> int:
    """Queue feed items not seen before, in one statement; returns how many were new. Known items are left
    as they are."""
    unique: dict[str, FeedEntry] = {}
    for entry in entries:
        unique.setdefault(entry_key(entry), entry)  # a feed listing an item twice queues it once
    if not unique:
        return 0
    result = conn.execute(text(
        "INSERT INTO feed_entries (feed_id, entry_key, url, guid, title, author, published_at, first_run_id, "
        "  last_run_id) "
        "SELECT :feed_id, e.key, e.url, e.guid, e.title, e.author, e.published_at, :run_id, :run_id "
        "FROM unnest(CAST(:keys AS text[]), CAST(:urls AS text[]), CAST(:guids AS text[]), CAST(:titles AS text[]), "
        "  CAST(:authors AS text[]), CAST(:published AS timestamptz[])) "
        "  AS e(key, url, guid, title, author, published_at) "
        "ON CONFLICT (feed_id, entry_key) DO NOTHING"
    ), {
        "feed_id": feed_id, "run_id": run_id, "keys": list(unique),
        "urls": [e.url for e in unique.values()], "guids": [e.guid for e in unique.values()],
        "titles": [e.title for e in unique.values()], "authors": [e.author for e in unique.values()],
        "published": [e.published_at for e in unique.values()],
    })
    return result.rowcount


def entries_to_fetch(
    conn: Connection, feed_ids: Sequence[int], max_attempts: int, since: datetime, until: datetime
) -> list[PendingEntry]:
    """Entries of these feeds published in [since, until) (or undated) whose page is still wanted: never
    fetched, or failed transiently fewer than `max_attempts` times."""
    rows = conn.execute(text(
        "SELECT e.id, e.url, e.title, e.author, e.published_at, s.name AS source, s.id AS source_id "
        "FROM feed_entries e JOIN feeds f ON f.id = e.feed_id JOIN sources s ON s.id = f.source_id "
        "WHERE e.feed_id = ANY(:feed_ids) "
        "  AND (e.published_at IS NULL OR (e.published_at >= :since AND e.published_at < :until)) "
        "  AND (e.status = 'pending' OR (e.status = 'page_failed' AND e.retryable AND e.attempts < :max_attempts)) "
        "ORDER BY e.published_at NULLS LAST, e.id"
    ), {"feed_ids": list(feed_ids), "max_attempts": max_attempts, "since": since, "until": until})
    return [PendingEntry(**row._mapping) for row in rows]


def page_in_hand(entry: PendingEntry, result: FetchResult) -> FetchedPage:
    """A page just fetched and stored, as extraction would read it back from `pages`."""
    return FetchedPage(entry_id=entry.id, entry_url=entry.url, final_url=result.final_url, title=entry.title,
                       author=entry.author, published_at=entry.published_at, source=entry.source,
                       source_id=entry.source_id, content_type=result.headers.get("content-type"),
                       body=result.content)


def store_pages(conn: Connection, run_id: int, fetched: Sequence[tuple[int, FetchResult]]) -> None:
    """Archive fetched pages (their bytes in archive_blobs, once per distinct content; their fetch facts in
    pages) and move their entries on to extraction. `fetched` holds (entry id, successful result) pairs."""
    if not fetched:
        return
    blobs = [archive.blob_of(result) for _entry_id, result in fetched]
    archive.store_blobs(conn, blobs)
    conn.execute(text(
        "WITH page AS ("
        "  INSERT INTO pages (entry_id, url, final_url, http_status, content_type, headers, sha256, run_id) "
        "  SELECT * FROM unnest(CAST(:entry_ids AS bigint[]), CAST(:urls AS text[]), CAST(:final_urls AS text[]), "
        "    CAST(:statuses AS integer[]), CAST(:content_types AS text[]), CAST(:headers AS jsonb[]), "
        "    CAST(:digests AS bytea[]), CAST(:run_ids AS bigint[])) "
        "  ON CONFLICT (entry_id) DO UPDATE SET url = excluded.url, final_url = excluded.final_url, "
        "    http_status = excluded.http_status, content_type = excluded.content_type, headers = excluded.headers, "
        "    fetched_at = now(), sha256 = excluded.sha256, run_id = excluded.run_id, body_encoding = NULL, "
        "    body = NULL "
        "  RETURNING entry_id) "
        "UPDATE feed_entries SET status = 'fetched', attempts = attempts + 1, retryable = false, error = NULL, "
        "  last_run_id = :run_id, updated_at = now() WHERE id IN (SELECT entry_id FROM page)"
    ), {"run_id": run_id, "entry_ids": [entry_id for entry_id, _result in fetched],
        "urls": [result.url for _entry_id, result in fetched],
        "final_urls": [result.final_url for _entry_id, result in fetched],
        "statuses": [result.status for _entry_id, result in fetched],
        "content_types": [result.headers.get("content-type") for _entry_id, result in fetched],
        "headers": [json.dumps(archive.kept_headers(result.headers)) for _entry_id, result in fetched],
        "digests": [blob.sha256 for blob in blobs], "run_ids": [run_id] * len(fetched)})


def mark_entry_failed(
    conn: Connection, entry_id: int, run_id: int, status: str, error: str, *, retryable: bool = False,
    attempted: bool = True,
) -> None:
    """Record why an entry did not become an article; `retryable` ones are fetched again by later runs. A page
    not `attempted` (its host asked us to wait) does not use up one of the entry's attempts."""
    conn.execute(text(
        "UPDATE feed_entries SET status = :status, error = :error, retryable = :retryable, "
        "  attempts = attempts + CASE WHEN :status = 'page_failed' AND :attempted THEN 1 ELSE 0 END, "
        "  last_run_id = :run_id, updated_at = now() WHERE id = :entry_id "
        # a replay that fails the same way again changes nothing; a failed fetch always counts an attempt
        "  AND (:status = 'page_failed' OR (status, error, retryable) IS DISTINCT FROM (:status, :error, :retryable))"
    ), {"entry_id": entry_id, "run_id": run_id, "status": status, "error": error[:2000], "retryable": retryable,
        "attempted": attempted})


def fetched_entry_ids(conn: Connection, feed_ids: Sequence[int]) -> list[int]:
    rows = conn.execute(text(
        "SELECT id FROM feed_entries WHERE feed_id = ANY(:feed_ids) AND status = 'fetched' "
        "ORDER BY published_at NULLS LAST, id"
    ), {"feed_ids": list(feed_ids)})
    return [int(row.id) for row in rows]


def fetched_pages(conn: Connection, entry_ids: Sequence[int], *, replay: bool = False) -> list[FetchedPage]:
    """The archived pages of these entries, decompressed: only those still waiting for extraction, or with
    `replay` those of any entry whose page is archived (to process them again)."""
    waiting = "" if replay else "AND e.status = 'fetched' "
    rows = conn.execute(text(
        "SELECT e.id AS entry_id, e.url AS entry_url, p.final_url, e.title, e.author, e.published_at, "
        "       s.name AS source, s.id AS source_id, p.content_type, "
        "       coalesce(b.encoding, p.body_encoding) AS body_encoding, coalesce(b.body, p.body) AS body "
        "FROM feed_entries e JOIN pages p ON p.entry_id = e.id JOIN feeds f ON f.id = e.feed_id "
        "JOIN sources s ON s.id = f.source_id LEFT JOIN archive_blobs b ON b.sha256 = p.sha256 "
        f"WHERE e.id = ANY(:ids) {waiting}AND (p.sha256 IS NOT NULL OR p.body IS NOT NULL) "
        "ORDER BY e.published_at NULLS LAST, e.id"
    ), {"ids": list(entry_ids)})
    pages = []
    for row in rows:
        fields = dict(row._mapping)
        encoding = fields.pop("body_encoding")
        try:
            fields["body"] = archive.decoded(encoding, row.body)
        except zlib.error as exc:
            # one damaged row must not stop its batch: the entry is recorded as failed with this reason
            LOGGER.warning("stored page of entry %s is unreadable: %s", row.entry_id, exc)
            fields["body"], fields["unreadable"] = b"", f"stored page unreadable: {exc}"
        pages.append(FetchedPage(**fields))
    return pages


# an entry whose page is archived and that belongs to [:since, :until): published in it, or undated and
# fetched in it (what a replay of the interval processes again)
ARCHIVED_IN_INTERVAL = (
    "(p.sha256 IS NOT NULL OR p.body IS NOT NULL) "
    "AND ((e.published_at >= :since AND e.published_at < :until) "
    "     OR (e.published_at IS NULL AND p.fetched_at >= :since AND p.fetched_at < :until))"
)


def replay_entry_ids(conn: Connection, feed_ids: Sequence[int] | None, since: datetime, until: datetime) -> list[int]:
    """Entries whose page is archived and that belong to [since, until): published in it, or undated and
    fetched in it; of these feeds, or of every feed (disabled ones included) when `feed_ids` is None."""
    rows = conn.execute(text(
        "SELECT e.id FROM feed_entries e JOIN pages p ON p.entry_id = e.id "
        f"WHERE (CAST(:all_feeds AS boolean) OR e.feed_id = ANY(:feed_ids)) AND {ARCHIVED_IN_INTERVAL} "
        "ORDER BY e.published_at NULLS LAST, e.id"
    ), {"all_feeds": feed_ids is None, "feed_ids": list(feed_ids or []), "since": since, "until": until})
    return [int(row.id) for row in rows]


def replay_feed_ids(conn: Connection, since: datetime, until: datetime) -> list[int]:
    """The feeds (enabled or not) with archived pages in [since, until), as replay_entry_ids selects them."""
    rows = conn.execute(text(
        f"SELECT DISTINCT e.feed_id FROM feed_entries e JOIN pages p ON p.entry_id = e.id "
        f"WHERE {ARCHIVED_IN_INTERVAL} ORDER BY e.feed_id"
    ), {"since": since, "until": until})
    return [int(row.feed_id) for row in rows]

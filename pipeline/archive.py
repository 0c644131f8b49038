"""The raw archive: every fetched document's bytes, compressed and stored once per distinct content."""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from pipeline.http import GZIP_WBITS
from pipeline.models import FetchResult

LOGGER = logging.getLogger(__name__)

ZLIB_LEVEL = 1  # fastest level: a document is stored once and read once or twice
# response headers kept with each fetch: what a replay or an audit needs to know about the bytes
KEPT_HEADERS = ("content-type", "content-encoding", "content-language", "content-length", "etag",
                "last-modified", "date", "cache-control", "expires", "retry-after", "location")
PRUNE_BATCH = 1000  # rows per pruning transaction, so a large prune never holds long locks


@dataclass(frozen=True)
class Blob:
    """One document as the archive stores it: the SHA-256 of its decoded bytes, and those bytes compressed."""

    sha256: bytes
    encoding: str  # zlib, gzip (as the server sent it) or identity
    size: int  # decoded bytes
    body: bytes


@dataclass(frozen=True)
class PruneOutcome:
    pages: int  # page rows whose bytes were dropped (their fetch facts stay)
    feed_documents: int  # feed and sitemap documents dropped
    blobs: int  # distinct documents deleted
    bytes: int  # compressed bytes freed


def blob_of(result: FetchResult) -> Blob:
    """The archive form of a successful fetch: gzip bodies as the server sent them, others zlib-compressed."""
    content = result.content
    digest = hashlib.sha256(content).digest()
    if result.body_encoding == "gzip":
        return Blob(digest, "gzip", len(content), result.body)
    return Blob(digest, "zlib", len(content), zlib.compress(content, ZLIB_LEVEL))


def decoded(encoding: str, body: bytes) -> bytes:
    """The original bytes of a stored body; raises zlib.error when they are damaged."""
    if encoding == "zlib":
        return zlib.decompress(body)
    if encoding == "gzip":  # one member, checked complete when fetched
        return zlib.decompress(body, GZIP_WBITS)
    return bytes(body)


def kept_headers(headers: dict[str, str]) -> dict[str, str]:
    return {name: headers[name][:1000] for name in KEPT_HEADERS if name in headers}


def store_blobs(conn: Connection, blobs: list[Blob]) -> None:
    """Insert the documents not archived yet, in one statement; identical content is stored once."""
    # in digest order: two runs archiving the same documents wait on each other instead of deadlocking
    unique = {blob.sha256: blob for blob in sorted(blobs, key=lambda blob: blob.sha256)}
    if not unique:
        return
    conn.execute(text(
        "INSERT INTO archive_blobs (sha256, encoding, size, stored_size, body) "
        "SELECT * FROM unnest(CAST(:digests AS bytea[]), CAST(:encodings AS text[]), CAST(:sizes AS integer[]), "
        "  CAST(:stored AS integer[]), CAST(:bodies AS bytea[])) "
        "ON CONFLICT (sha256) DO NOTHING"
    ), {"digests": list(unique), "encodings": [b.encoding for b in unique.values()],
        "sizes": [b.size for b in unique.values()], "stored": [len(b.body) for b in unique.values()],
        "bodies": [b.body for b in unique.values()]})


# each drops the bytes of up to :batch rows fetched before :cutoff, keeping the rows (their fetch facts)
DROPS = {
    "pages": "UPDATE pages SET sha256 = NULL, body = NULL, body_encoding = NULL WHERE entry_id IN ("
             "  SELECT entry_id FROM pages WHERE fetched_at < :cutoff AND (sha256 IS NOT NULL OR body IS NOT NULL) "
             "  LIMIT :batch)",
    "feeds": "UPDATE feed_fetches SET sha256 = NULL WHERE id IN ("
             "  SELECT id FROM feed_fetches WHERE fetched_at < :cutoff AND sha256 IS NOT NULL LIMIT :batch)",
    "sitemaps": "UPDATE sitemap_documents SET sha256 = NULL WHERE (run_id, feed_id, url) IN ("
                "  SELECT run_id, feed_id, url FROM sitemap_documents WHERE fetched_at < :cutoff "
                "  AND sha256 IS NOT NULL LIMIT :batch)",
}
# deletes up to :batch documents stored before :cutoff that nothing refers to; how many, and their bytes
DELETE_UNUSED = (
    "WITH gone AS ("
    "  DELETE FROM archive_blobs WHERE sha256 IN ("
    "    SELECT b.sha256 FROM archive_blobs AS b WHERE b.stored_at < :cutoff "
    "      AND NOT EXISTS (SELECT 1 FROM pages AS p WHERE p.sha256 = b.sha256) "
    "      AND NOT EXISTS (SELECT 1 FROM feed_fetches AS ff WHERE ff.sha256 = b.sha256) "
    "      AND NOT EXISTS (SELECT 1 FROM sitemap_documents AS sd WHERE sd.sha256 = b.sha256) "
    "    LIMIT :batch FOR UPDATE SKIP LOCKED) "
    "  RETURNING stored_size) "
    "SELECT count(*) AS rows, coalesce(sum(stored_size), 0) AS bytes FROM gone"
)


def prune(engine: Engine, older_than: datetime, batch: int = PRUNE_BATCH) -> PruneOutcome:
    """Drop the bytes of pages and feed and sitemap documents fetched before `older_than`, keeping their fetch
    facts, then delete the documents nothing refers to any more; one transaction per batch of rows."""
    dropped = {what: _in_batches(engine, statement, older_than, batch)[0] for what, statement in DROPS.items()}
    blobs, freed = _in_batches(engine, DELETE_UNUSED, older_than, batch)
    outcome = PruneOutcome(pages=dropped["pages"], feed_documents=dropped["feeds"] + dropped["sitemaps"],
                           blobs=blobs, bytes=freed)
    LOGGER.info("archive prune before %s: %d pages and %d feed documents dropped, %d documents (%d bytes) freed",
                older_than.isoformat(), outcome.pages, outcome.feed_documents, blobs, freed)
    return outcome


def _in_batches(engine: Engine, statement: str, older_than: datetime, batch: int) -> tuple[int, int]:
    """Run `statement` in transactions of its own until it touches fewer than `batch` rows; returns the rows
    it touched and, for DELETE_UNUSED, the bytes it freed."""
    rows = freed = 0
    while True:
        with engine.begin() as conn:
            result = conn.execute(text(statement), {"cutoff": older_than, "batch": batch})
            if result.returns_rows:
                done = result.one()
                touched, freed = int(done.rows), freed + int(done.bytes)
            else:
                touched = result.rowcount
        rows += touched
        if touched < batch:
            return rows, freed


def store_sitemap_documents(conn: Connection, run_id: int, feed_id: int,
                            fetched: list[tuple[FetchResult, int, str | None]]) -> None:
    """Record (and archive) the child documents a sitemap poll read, as (fetch, URLs listed, error) triples; a
    retried poll overwrites its rows."""
    blobs = {id(result): blob_of(result) for result, _urls, _error in fetched if result.ok and result.content}
    store_blobs(conn, list(blobs.values()))
    for result, urls, error in fetched:
        blob = blobs.get(id(result))
        conn.execute(text(
            "INSERT INTO sitemap_documents (run_id, feed_id, url, final_url, http_status, headers, sha256, urls, "
            "  error) "
            "VALUES (:run_id, :feed_id, :url, :final_url, :status, CAST(:headers AS jsonb), :sha256, :urls, :error) "
            "ON CONFLICT (run_id, feed_id, url) DO UPDATE SET final_url = excluded.final_url, "
            "  http_status = excluded.http_status, headers = excluded.headers, fetched_at = now(), "
            "  sha256 = excluded.sha256, urls = excluded.urls, error = excluded.error"
        ), {"run_id": run_id, "feed_id": feed_id, "url": result.url, "final_url": result.final_url,
            "status": result.status, "headers": json.dumps(kept_headers(result.headers)),
            "sha256": blob.sha256 if blob else None, "urls": urls, "error": error})

"""The raw archive: every fetched document's bytes, compressed and stored once per distinct content."""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from pipeline.http import GZIP_WBITS
from pipeline.models import FetchResult

LOGGER = logging.getLogger(__name__)

ZLIB_LEVEL = 1  # fastest level: a document is stored once and read once or twice
# response headers kept with each fetch: what a replay or an audit needs to know about the bytes
KEPT_HEADERS = ("content-type", "content-encoding", "content-language", "content-length", "etag",
                "last-modified", "date", "cache-control", "expires", "retry-after", "location")
PRUNE_BATCH = 1000  # rows per pruning statement, so a large prune never holds long locks


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


def feed_document(conn: Connection, fetch_id: int) -> bytes | None:
    """The archived document of one feed poll (feed_fetches.id), decoded; None if there is none."""
    row = conn.execute(text(
        "SELECT b.encoding, b.body FROM feed_fetches AS ff JOIN archive_blobs AS b ON b.sha256 = ff.sha256 "
        "WHERE ff.id = :id"
    ), {"id": fetch_id}).one_or_none()
    return None if row is None else decoded(row.encoding, row.body)


def prune(conn: Connection, older_than: datetime, batch: int = PRUNE_BATCH) -> PruneOutcome:
    """Drop the bytes of pages and feed documents fetched before `older_than`, keeping their fetch facts, then
    delete the documents nothing refers to any more. Runs in batches in the caller's transaction."""
    pages = feeds = 0
    while True:
        moved = conn.execute(text(
            "UPDATE pages SET sha256 = NULL, body = NULL, body_encoding = NULL WHERE entry_id IN ("
            "  SELECT entry_id FROM pages WHERE fetched_at < :cutoff AND (sha256 IS NOT NULL OR body IS NOT NULL) "
            "  LIMIT :batch)"
        ), {"cutoff": older_than, "batch": batch}).rowcount
        pages += moved
        if moved < batch:
            break
    while True:
        moved = conn.execute(text(
            "UPDATE feed_fetches SET sha256 = NULL WHERE id IN ("
            "  SELECT id FROM feed_fetches WHERE fetched_at < :cutoff AND sha256 IS NOT NULL LIMIT :batch)"
        ), {"cutoff": older_than, "batch": batch}).rowcount
        feeds += moved
        if moved < batch:
            break
    while True:
        moved = conn.execute(text(
            "UPDATE sitemap_documents SET sha256 = NULL WHERE (run_id, feed_id, url) IN ("
            "  SELECT run_id, feed_id, url FROM sitemap_documents WHERE fetched_at < :cutoff AND sha256 IS NOT NULL "
            "  LIMIT :batch)"
        ), {"cutoff": older_than, "batch": batch}).rowcount
        feeds += moved
        if moved < batch:
            break
    blobs = freed = 0
    while True:
        row = conn.execute(text(
            "WITH gone AS ("
            "  DELETE FROM archive_blobs WHERE sha256 IN ("
            "    SELECT b.sha256 FROM archive_blobs AS b WHERE b.stored_at < :cutoff "
            "      AND NOT EXISTS (SELECT 1 FROM pages AS p WHERE p.sha256 = b.sha256) "
            "      AND NOT EXISTS (SELECT 1 FROM feed_fetches AS ff WHERE ff.sha256 = b.sha256) "
            "      AND NOT EXISTS (SELECT 1 FROM sitemap_documents AS sd WHERE sd.sha256 = b.sha256) "
            "    LIMIT :batch FOR UPDATE SKIP LOCKED) "
            "  RETURNING stored_size) "
            "SELECT count(*) AS blobs, coalesce(sum(stored_size), 0) AS bytes FROM gone"
        ), {"cutoff": older_than, "batch": batch}).one()
        blobs += int(row.blobs)
        freed += int(row.bytes)
        if row.blobs < batch:
            break
    LOGGER.info("archive prune before %s: %d pages and %d feed documents dropped, %d documents (%d bytes) freed",
                older_than.isoformat(), pages, feeds, blobs, freed)
    return PruneOutcome(pages=pages, feed_documents=feeds, blobs=blobs, bytes=freed)


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

"""Re-tagging stored articles with the current taxonomy: chunks of articles, one transaction each, no fetching."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime

from sqlalchemy import Connection, Engine, text

from pipeline import load
from pipeline.load import lock_key, sync_topics
from pipeline.models import TopicHit
from pipeline.topics import Taxonomy

LOGGER = logging.getLogger(__name__)

CHUNK_SIZE = 500
MAX_BATCHES = 32
MIN_BATCH = 2_000  # articles per mapped Airflow task before another batch is worth its start-up

Progress = Callable[[int], object]

# articles whose publication time (else first sighting) falls in [since, until); NULL bounds are open
WINDOW = (
    "(CAST(:since AS timestamptz) IS NULL OR coalesce(published_at, first_seen_at) >= CAST(:since AS timestamptz)) "
    "AND (CAST(:until AS timestamptz) IS NULL OR coalesce(published_at, first_seen_at) < CAST(:until AS timestamptz))"
)


@dataclass
class RetagCounts:
    """What a re-tag did: articles looked at, articles whose topic rows changed, and rows by kind of change."""

    articles: int = 0
    articles_changed: int = 0
    rows_added: int = 0
    rows_updated: int = 0
    rows_removed: int = 0

    def add(self, other: RetagCounts) -> None:
        for spec in fields(self):
            setattr(self, spec.name, getattr(self, spec.name) + getattr(other, spec.name))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def rows_changed(self) -> int:
        return self.rows_added + self.rows_updated + self.rows_removed


def count_articles(conn: Connection, since: datetime | None, until: datetime | None) -> int:
    """Articles a re-tag of [since, until) would look at."""
    return int(conn.execute(text(f"SELECT count(*) FROM articles WHERE {WINDOW}"),
                            {"since": since, "until": until}).scalar_one())


def plan_batches(conn: Connection, since: datetime | None, until: datetime | None,
                 max_batches: int = MAX_BATCHES, min_batch: int = MIN_BATCH) -> list[list[int]]:
    """[first id, last id] ranges of about equal article counts, at most max_batches, for mapped tasks."""
    total = count_articles(conn, since, until)
    if not total:
        return []
    batches = max(1, min(max_batches, -(-total // min_batch)))
    rows = conn.execute(text(
        f"SELECT min(id) AS first, max(id) AS last FROM ("
        f"  SELECT id, ntile(:batches) OVER (ORDER BY id) AS part FROM articles WHERE {WINDOW}) AS parts "
        "GROUP BY part ORDER BY part"
    ), {"since": since, "until": until, "batches": batches}).all()
    return [[int(row.first), int(row.last)] for row in rows]


def open_retag_run(conn: Connection, run_key: str, trigger: str, taxonomy: Taxonomy,
                   since: datetime | None, until: datetime | None) -> int:
    """Open (or reopen, for a retried run) the retag_runs row; returns its id."""
    return int(conn.execute(text(
        "INSERT INTO retag_runs (run_key, trigger, taxonomy_version, interval_start, interval_end) "
        "VALUES (:key, :trigger, :version, :since, :until) "
        "ON CONFLICT (run_key) DO UPDATE SET trigger = excluded.trigger, taxonomy_version = excluded.taxonomy_version, "
        "  interval_start = excluded.interval_start, interval_end = excluded.interval_end, status = 'running', "
        "  articles = 0, articles_changed = 0, rows_added = 0, rows_updated = 0, rows_removed = 0, "
        "  started_at = now(), finished_at = NULL, error = NULL "
        "RETURNING id"
    ), {"key": run_key, "trigger": trigger, "version": taxonomy.version, "since": since, "until": until}).scalar_one())


def finish_retag_run(conn: Connection, run_id: int, counts: RetagCounts, error: str | None = None) -> None:
    conn.execute(text(
        "UPDATE retag_runs SET status = :status, articles = :articles, articles_changed = :articles_changed, "
        "  rows_added = :rows_added, rows_updated = :rows_updated, rows_removed = :rows_removed, "
        "  finished_at = now(), error = :error WHERE id = :id"
    ), {**counts.as_dict(), "status": "failed" if error else "success", "error": error, "id": run_id})


def retag_articles(
    engine: Engine,
    taxonomy: Taxonomy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    first_id: int | None = None,
    last_id: int | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
    counts: RetagCounts | None = None,
) -> RetagCounts:
    """Tag the stored articles of [since, until) (and of an id range, when given) again from their stored
    title and body, and make their topic rows equal to the result: one transaction per chunk of articles, in
    id order. Rows that would not change are not touched, so a second run changes nothing. The caller syncs
    the topics table first (sync_topics)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    counts = counts if counts is not None else RetagCounts()  # the caller's, to keep partial counts on failure
    after = (first_id - 1) if first_id is not None else 0
    while True:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))  # a lost last chunk is redone by a rerun
            chunk = retag_chunk(conn, taxonomy, since=since, until=until, after=after, last_id=last_id,
                                limit=chunk_size)
        if chunk is None:
            break
        after, done = chunk
        counts.add(done)
        if progress:
            progress(done.articles)
    LOGGER.info("retag: %d articles, %d changed (%d rows added, %d updated, %d removed)", counts.articles,
                counts.articles_changed, counts.rows_added, counts.rows_updated, counts.rows_removed)
    return counts


def retag_chunk(conn: Connection, taxonomy: Taxonomy, *, since: datetime | None, until: datetime | None,
                after: int, last_id: int | None, limit: int) -> tuple[int, RetagCounts] | None:
    """Re-tag the next `limit` articles with id > after in the caller's transaction; returns the last id seen
    and the counts, or None when no article is left."""
    picked = conn.execute(text(
        f"SELECT id, canonical_url FROM articles WHERE id > :after "
        f"AND (CAST(:last AS bigint) IS NULL OR id <= CAST(:last AS bigint)) AND {WINDOW} ORDER BY id LIMIT :limit"
    ), {"after": after, "last": last_id, "since": since, "until": until, "limit": limit}).all()
    if not picked:
        return None
    # the advisory locks load_articles takes on canonical URLs, in the same sorted order: a concurrent load of
    # one of these articles waits for this chunk (or this chunk for it), and the two never deadlock
    keys = sorted({lock_key("url", row.canonical_url) for row in picked})
    conn.execute(text(
        "SELECT count(pg_advisory_xact_lock(k.key)) FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS k(key, n)"
    ), {"keys": keys})
    ids = [int(row.id) for row in picked]
    tagged = {
        int(row.id): taxonomy.match(row.title, row.body)
        for row in conn.execute(text("SELECT id, title, body FROM articles WHERE id = ANY(:ids)"), {"ids": ids})
    }
    return ids[-1], replace_topics(conn, tagged, taxonomy.version)


def replace_topics(conn: Connection, tagged: dict[int, list[TopicHit]], taxonomy_version: str) -> RetagCounts:
    """Make each article's topic rows equal to its hits (load.replace_topics, the loader's own statement)."""
    changes = load.replace_topics(conn, dict(tagged), taxonomy_version)
    return RetagCounts(articles=len(tagged), articles_changed=changes.articles_changed,
                       rows_added=changes.rows_added, rows_updated=changes.rows_updated,
                       rows_removed=changes.rows_removed)


def retag(
    engine: Engine,
    taxonomy: Taxonomy,
    *,
    run_key: str,
    trigger: str = "cli",
    since: datetime | None = None,
    until: datetime | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
) -> tuple[int, RetagCounts]:
    """A whole re-tag without Airflow: sync the topics, log the run in retag_runs, re-tag every chunk."""
    with engine.begin() as conn:
        sync_topics(conn, taxonomy)
        run_id = open_retag_run(conn, run_key, trigger, taxonomy, since, until)
    counts = RetagCounts()
    try:
        retag_articles(engine, taxonomy, since=since, until=until, chunk_size=chunk_size, progress=progress,
                       counts=counts)
    except Exception as exc:
        with engine.begin() as conn:
            finish_retag_run(conn, run_id, counts, error=f"{type(exc).__name__}: {exc}")
        raise
    with engine.begin() as conn:
        finish_retag_run(conn, run_id, counts)
    return run_id, counts

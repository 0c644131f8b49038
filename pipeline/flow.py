"""One ingestion pass over a data interval, composed from the stages; the DAG and the CLI both call it."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, text

from pipeline import archive, store
from pipeline.db import engine_for, forget_engines
from pipeline.dedupe import choose_canonical, content_hash, word_count
from pipeline.extract import EXTRACTOR_VERSION, extract
from pipeline.feeds import FEED_ACCEPT, in_window, parse_feed
from pipeline.http import FEED_TYPES, PAGE_TYPES, HttpClient
from pipeline.load import LoadItem, load_articles, sync_topics
from pipeline.models import Article, Extraction, FetchResult
from pipeline.neardup import scheme_for
from pipeline.politeness import Politeness, cache_policy, deferred, retry_after, without_validators
from pipeline.polling import adapted_interval, backoff_delay, disable_reason
from pipeline.settings import Settings
from pipeline.sitemaps import read_sitemaps
from pipeline.topics import Taxonomy, load_taxonomy

LOGGER = logging.getLogger(__name__)

PROCESS_CHUNK = 25  # articles per load transaction
HANDOVER_CHUNK = 5  # fetched pages per write, and per hand-over to a worker process
HANDOVER_MEMORY = 64 * 1024 * 1024  # bytes of fetched pages waiting in memory for a worker; the rest wait by id
FIRST_PAGES_WAIT = 1.0  # seconds the feed polling waits, once, for the first pages to be handed over
PAGE_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
# live: poll feeds and sitemaps, fetch new pages, process them; replay: process the archived pages of the
# interval again with the current code and rules, with no network at all; both: live, then replay
MODES = ("live", "replay", "both")
Progress = Callable[[int], None]


def resolve_interval(
    start: datetime | None,
    end: datetime | None,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    manual_window: timedelta = timedelta(hours=24),
) -> tuple[datetime, datetime]:
    """The interval a run covers: explicit since/until win; a zero-length interval (a manual Airflow run)
    becomes the `manual_window` before its end."""
    if end is None:
        raise ValueError("a run needs the end of its data interval")
    until_at = _as_utc(until) if until else _as_utc(end)
    if since:
        since_at = _as_utc(since)
    elif start is not None and start < end:
        since_at = _as_utc(start)
    else:
        since_at = until_at - manual_window
    if since_at >= until_at:
        raise ValueError(f"empty interval: since {since_at.isoformat()} is not before until {until_at.isoformat()}")
    return since_at, until_at


def _as_utc(value: str | datetime) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def plan_batches(feed_ids: Sequence[int], batch_size: int, max_batches: int) -> list[list[int]]:
    """Split feeds into at most `max_batches` batches of about `batch_size` (batches grow past it if needed)."""
    if not feed_ids:
        return []
    count = min(max_batches, -(-len(feed_ids) // batch_size))
    return [list(feed_ids[i::count]) for i in range(count)]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def open_run(engine: Engine, run_key: str, trigger: str, since: datetime, until: datetime, *,
             mode: str = "live", run_type: str | None = None, settings: Settings | None = None) -> int:
    """Open (or reopen, for a retried or re-run run) the run's ingest_runs row with its mode, run type and the
    extractor and taxonomy versions it runs with; returns its id."""
    check_mode(mode)
    taxonomy_version = _taxonomy(settings.taxonomy_path).version if settings else None
    with engine.begin() as conn:
        run_id = store.start_run(conn, run_key, trigger, since, until, mode=mode, run_type=run_type,
                                 extractor_version=EXTRACTOR_VERSION, taxonomy_version=taxonomy_version)
    LOGGER.info("run %s (%s, %s): interval %s to %s", run_id, run_key, mode, since.isoformat(), until.isoformat())
    return run_id


def feed_batches(engine: Engine, settings: Settings, mode: str = "live", since: datetime | None = None,
                 until: datetime | None = None) -> list[list[int]]:
    """The feeds a run works on, split into batches for one mapped task each: the enabled ones to poll, and
    for a replay every feed (disabled ones included) with archived pages in [since, until)."""
    check_mode(mode)
    with engine.begin() as conn:
        feed_ids = [] if mode == "replay" else [feed.id for feed in store.list_feeds(conn, enabled_only=True)]
        if mode != "live":
            if since is None or until is None:
                raise ValueError("a replay needs its interval")
            feed_ids = sorted(set(feed_ids) | set(store.replay_feed_ids(conn, since, until)))
    batches = plan_batches(feed_ids, settings.feed_batch_size, settings.max_batches)
    LOGGER.info("%d feeds in %d batches (%s)", len(feed_ids), len(batches), mode)
    return batches


def fetch_feeds(
    engine: Engine,
    settings: Settings,
    run_id: int,
    feed_ids: Sequence[int],
    since: datetime,
    until: datetime,
    progress: Progress | None = None,
    on_stored: Callable[[list[store.FetchedPage]], None] | None = None,
) -> dict[str, float]:
    """Poll each feed, queue its items, and fetch the pages of its queued items published in the interval.

    Every item a feed lists is stored, so a later backfill of its date finds it even after the feed has
    dropped it. A feed's pages are fetched on background threads while the next feeds are polled. A failing
    feed or page is recorded and the others go on. `on_stored` is called (from a fetch thread) with each
    committed chunk of pages, so a caller can start extracting them while fetching goes on.
    """
    counts = {"feeds_polled": 0, "feeds_failed": 0, "entries_seen": 0, "entries_new": 0, "pages_fetched": 0,
              "pages_failed": 0, "fetch_seconds": 0.0}
    started = time.monotonic()
    window_start = since - settings.lookback
    with engine.begin() as conn:  # a feed disabled since the run was planned is left alone
        feeds = store.list_feeds(conn, enabled_only=True, ids=feed_ids)
    with HttpClient(settings) as client:
        polite = Politeness(engine, client, settings)  # robots.txt looked up once per host in this call
        pages = _PageFetcher(engine, client, settings, run_id, progress, on_stored, polite)
        try:
            for feed in feeds:
                with engine.begin() as conn:
                    if feed.due:
                        poll = _poll_sitemap if feed.kind == "sitemap" else _poll_feed
                        poll(conn, client, settings, feed, run_id, window_start, until, counts, polite)
                    else:  # backing off after failures, or polled recently enough for its publishing rate
                        LOGGER.info("feed %s: not polled before %s (%d failures in a row)", feed.url,
                                    feed.next_poll_at.isoformat() if feed.next_poll_at else "?",
                                    feed.consecutive_failures)
                    # items queued by this poll, and earlier ones still wanted (a failed poll retries those too)
                    wanted = store.entries_to_fetch(conn, [feed.id], settings.max_page_attempts, window_start,
                                                    until)
                pages.fetch(wanted)  # after the commit: the fetch threads write these rows
                if on_stored and wanted:
                    # let the first pages reach the waiting workers before parsing more feeds competes with
                    # the fetch threads for the interpreter
                    pages.first_write.wait(FIRST_PAGES_WAIT)
        finally:
            pages.finish()
    counts["pages_fetched"] += pages.fetched
    counts["pages_failed"] += pages.failed
    counts["fetch_seconds"] = time.monotonic() - started
    LOGGER.info("fetch: %d feeds polled (%d failed), %d items seen, %d new, %d pages fetched, %d failed, %.2f s",
                counts["feeds_polled"], counts["feeds_failed"], counts["entries_seen"], counts["entries_new"],
                pages.fetched, pages.failed, counts["fetch_seconds"])
    return counts


def _poll_feed(conn: Connection, client: HttpClient, settings: Settings, feed: store.FeedRow, run_id: int,
               window_start: datetime, until: datetime, counts: dict[str, float], polite: Politeness) -> None:
    """Fetch and parse one feed, record the poll and when to poll it next, and queue the items it lists."""
    result = polite.fetch(feed.url, lambda: client.get(feed.url, accept=FEED_ACCEPT, etag=feed.etag,
                                                       last_modified=feed.last_modified, content_types=FEED_TYPES),
                          page=False)
    if deferred(result):  # its host asked for a longer wait than a run gives: the feed stays due
        LOGGER.info("feed %s: not polled: %s", feed.url, result.error)
        return
    counts["feeds_polled"] += 1
    if result.error:
        _record_failed_poll(conn, settings, feed, run_id, result, result.error, counts)
        return
    # an item must be seen before it ages out of the runs' window, so the interval never exceeds the lookback
    shortest, longest = settings.feed_min_interval, min(settings.feed_max_interval, settings.lookback)
    caching = cache_policy(result.headers)
    fresh_for = min(caching.fresh_for or timedelta(0), longest)  # the server's freshness: no poll before it
    if caching.no_store:
        result = without_validators(result)
    # the same bytes as last time are not modified, whatever the validators said (the hash decides)
    digest = None if result.status == 304 else hashlib.sha256(result.content).hexdigest()
    if digest is None or digest == feed.body_sha256:
        kept = timedelta(seconds=feed.poll_interval_seconds) if feed.poll_interval_seconds is not None else shortest
        store.record_feed_poll(conn, run_id, feed.id, status="not_modified", result=result, items=0,
                               items_in_window=0, error=None,
                               next_poll_in=max(shortest, min(longest, kept), fresh_for))
        return
    parsed = parse_feed(result.body, result.headers, result.final_url)
    items_in_window = sum(in_window(entry, window_start, until) for entry in parsed.entries)
    if parsed.error:
        _record_failed_poll(conn, settings, feed, run_id, result, parsed.error, counts)
        return
    status, error = ("malformed", parsed.bozo_reason) if parsed.bozo else ("ok", None)
    interval = adapted_interval((entry.published_at for entry in parsed.entries), shortest, longest)
    store.record_feed_poll(conn, run_id, feed.id, status=status, result=result, items=len(parsed.entries),
                           items_in_window=items_in_window, error=error, next_poll_in=max(interval, fresh_for),
                           poll_interval=interval)
    if status == "ok":  # a malformed feed is parsed again next time, so its health keeps saying so
        store.record_feed_body(conn, feed.id, digest)
    counts["entries_seen"] += len(parsed.entries)
    counts["entries_new"] += store.upsert_entries(conn, feed.id, run_id, parsed.entries)
    if status != "ok":
        LOGGER.warning("feed %s: %s: %s", feed.url, status, error)


class _InTurn:
    """Our client, each fetch in its host's turn (sitemaps are read as feeds are: without robots.txt)."""

    def __init__(self, client: HttpClient, polite: Politeness) -> None:
        self._client, self._polite = client, polite

    def get(self, url: str, **options: Any) -> FetchResult:
        return self._polite.fetch(url, lambda: self._client.get(url, **options), page=False)


def _poll_sitemap(conn: Connection, client: HttpClient, settings: Settings, feed: store.FeedRow, run_id: int,
                  window_start: datetime, until: datetime, counts: dict[str, float], polite: Politeness) -> None:
    """Read a news sitemap (or index) for the items dated in the window, record the poll and its documents
    (archived), and queue the items; an unusable child sitemap is recorded and the others still count."""
    read = read_sitemaps(_InTurn(client, polite), feed.url, window_start, until,
                         max_documents=settings.sitemap_max_documents)
    if deferred(read.fetches[0]):  # its host asked for a longer wait than a run gives: the source stays due
        LOGGER.info("sitemap %s: not read: %s", feed.url, read.fetches[0].error)
        return
    counts["feeds_polled"] += 1
    top, top_document = read.fetches[0], read.documents[0]
    archive.store_sitemap_documents(conn, run_id, feed.id, [
        (fetched, document.urls, document.error)
        for fetched, document in zip(read.fetches[1:], read.documents[1:], strict=True)])
    if top_document.error:
        _record_failed_poll(conn, settings, feed, run_id, top, top_document.error, counts)
        return
    problems = [f"{d.url}: {d.error or d.bozo_reason}" for d in read.documents if d.error or d.bozo_reason]
    status = "malformed" if problems else "ok"
    error = (f"{len(problems)} of {len(read.documents)} sitemap documents unusable or damaged; {problems[0]}"
             if problems else None)
    shortest, longest = settings.feed_min_interval, min(settings.feed_max_interval, settings.lookback)
    interval = adapted_interval((entry.published_at for entry in read.entries), shortest, longest)
    store.record_feed_poll(conn, run_id, feed.id, status=status, result=top, items=read.listed,
                           items_in_window=len(read.entries), error=error, next_poll_in=interval,
                           poll_interval=interval)
    counts["entries_seen"] += len(read.entries)
    counts["entries_new"] += store.upsert_entries(conn, feed.id, run_id, read.entries)
    if problems:
        LOGGER.warning("sitemap %s: %s", feed.url, error)


def _record_failed_poll(conn: Connection, settings: Settings, feed: store.FeedRow, run_id: int,
                        result: FetchResult, error: str, counts: dict[str, float]) -> None:
    """Record a failed poll, back off, and disable the feed when it is gone or has failed too often."""
    counts["feeds_failed"] += 1
    wait = backoff_delay(feed.consecutive_failures + 1, settings.feed_backoff, settings.feed_backoff_max)
    asked = retry_after(result.headers) if result.status in (429, 503) else None
    if asked:  # the server said when to come back: not before, within the longest backoff
        wait = max(wait, min(asked, settings.feed_backoff_max))
    failures = store.record_feed_poll(conn, run_id, feed.id, status="failed", result=result, items=0,
                                      items_in_window=0, error=error, next_poll_in=wait)
    LOGGER.warning("feed %s: failed (%d in a row): %s", feed.url, failures, error)
    reason = disable_reason(result.status, failures, settings.feed_max_failures, error)
    if reason:
        store.set_feed_enabled(conn, feed.url, False, reason)
        LOGGER.warning("feed %s: disabled: %s", feed.url, reason)


class _PageFetcher:
    """Fetches pages on `page_concurrency` threads; one writer thread stores them a chunk per transaction (one
    database session for all the fetch threads) and hands each chunk on. The first chunks are single pages,
    so extraction can start at once."""

    def __init__(self, engine: Engine, client: HttpClient, settings: Settings, run_id: int,
                 progress: Progress | None, on_stored: Callable[[list[store.FetchedPage]], None] | None,
                 polite: Politeness) -> None:
        self._engine, self._client, self._run_id, self._polite = engine, client, run_id, polite
        self._progress, self._on_stored = progress, on_stored
        self._threads = ThreadPoolExecutor(max(1, settings.page_concurrency), thread_name_prefix="page")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="page-writer")
        self._futures: list[Future[None]] = []
        self._written: list[Future[None]] = []
        self._lock = threading.Lock()
        self._done: list[tuple[store.PendingEntry, FetchResult]] = []
        self._writes = 0
        self.fetched = self.failed = 0
        self.first_write = threading.Event()

    def fetch(self, entries: Iterable[store.PendingEntry]) -> None:
        self._futures += [self._threads.submit(self._fetch_one, entry) for entry in entries]

    def _fetch_one(self, entry: store.PendingEntry) -> None:
        result = self._polite.fetch(entry.url, lambda: self._client.get(entry.url, accept=PAGE_ACCEPT, keep_gzip=True,
                                                                        content_types=PAGE_TYPES))
        with self._lock:
            self._done.append((entry, result))
            self.fetched += result.ok
            self.failed += not result.ok
            if len(self._done) < min(HANDOVER_CHUNK, self._writes + 1):
                return
            chunk, self._done = self._done, []
            self._writes += 1
            self._written.append(self._writer.submit(self._write, chunk))

    def finish(self) -> None:
        """Wait for every fetch and write, write what is left, and raise the first error met."""
        try:
            for future in self._futures:
                future.result()
        finally:
            self._threads.shutdown()
            if self._done:
                chunk, self._done = self._done, []
                self._written.append(self._writer.submit(self._write, chunk))
            self._writer.shutdown()
        for future in self._written:
            future.result()

    def _write(self, chunk: list[tuple[store.PendingEntry, FetchResult]]) -> None:
        # rows locked in id order: overlapping runs writing the same entries cannot deadlock
        chunk.sort(key=lambda pair: pair[0].id)
        with self._engine.begin() as conn:
            # a page lost to a database crash before the WAL flush is simply fetched again by the next run
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            store.store_pages(conn, self._run_id, [(entry.id, result) for entry, result in chunk if result.ok])
            for entry, result in chunk:
                if not result.ok:
                    store.mark_entry_failed(conn, entry.id, self._run_id, "page_failed",
                                            result.error or "fetch failed", retryable=result.retryable,
                                            attempted=not deferred(result))
        if self._progress:
            self._progress(len(chunk))
        if self._on_stored:
            self._on_stored([store.page_in_hand(entry, result) for entry, result in chunk if result.ok])
        self.first_write.set()


_SYNCED_TOPICS: set[tuple[str, str]] = set()


@cache
def _taxonomy(path: Path | None) -> Taxonomy:
    return load_taxonomy(path)


def build_article(page: store.FetchedPage, extraction: Extraction, taxonomy: Taxonomy) -> Article:
    """Combine what the feed said and what the page says into the row to store."""
    published_at = page.published_at or _page_date(extraction.published)
    body = extraction.body
    title = page.title or extraction.title
    return Article(
        canonical_url=choose_canonical(page.final_url, extraction.canonical_url),
        url=page.final_url,
        title=title,
        author=extraction.author or page.author,
        published_at=published_at,
        language=extraction.language,
        source=page.source,
        source_id=page.source_id,
        body=body,
        word_count=word_count(body),
        content_hash=content_hash(body),
        topics=taxonomy.match(title, body),
    )


def _page_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return _as_utc(value)
    except ValueError:
        LOGGER.debug("unreadable page date %r", value)
        return None


def _ready_taxonomy(engine: Engine, settings: Settings) -> Taxonomy:
    """The taxonomy, with its topics written to this database once per process (not once per chunk)."""
    taxonomy = _taxonomy(settings.taxonomy_path)
    synced = (engine.url.render_as_string(hide_password=True), taxonomy.version)
    if synced not in _SYNCED_TOPICS:
        with engine.begin() as conn:
            sync_topics(conn, taxonomy)
        _SYNCED_TOPICS.add(synced)
    return taxonomy


def process_entries(
    engine: Engine,
    settings: Settings,
    run_id: int,
    entries: Sequence[int | store.FetchedPage],
    progress: Progress | None = None,
    *,
    replay: bool = False,
) -> dict[str, float]:
    """Extract, dedupe, tag and load fetched pages, one transaction per chunk of articles. Each entry is an
    entry id, whose archived page is read back, or a page this run has just fetched and stored, in hand. With
    `replay`, an entry id's page is read whatever became of it before, so it is processed again."""
    counts = {"extraction_failures": 0, "duplicates": 0, "loaded": 0, "tagged": 0, "replayed": 0, "unchanged": 0,
              "retagged": 0, "extract_seconds": 0.0, "tag_seconds": 0.0, "load_seconds": 0.0}
    taxonomy = _ready_taxonomy(engine, settings)
    pages_read = 0
    for offset in range(0, len(entries), PROCESS_CHUNK):
        chunk = entries[offset:offset + PROCESS_CHUNK]
        pages = [entry for entry in chunk if isinstance(entry, store.FetchedPage)]
        stored = [entry for entry in chunk if not isinstance(entry, store.FetchedPage)]
        if stored:
            with engine.begin() as conn:
                read = store.fetched_pages(conn, stored, replay=replay)
            pages += read
            counts["replayed"] += len(read) if replay else 0
        pages_read += len(pages)
        items: list[LoadItem] = []
        failures: list[tuple[int, str]] = []
        for page in pages:
            if page.unreadable:
                failures.append((page.entry_id, page.unreadable))
                continue
            tick = time.perf_counter()
            extraction = extract(page.body, page.final_url, min_words=settings.min_words,
                                 content_type=page.content_type)
            counts["extract_seconds"] += time.perf_counter() - tick
            if not extraction.ok:
                failures.append((page.entry_id, extraction.error or "extraction failed"))
                continue
            tick = time.perf_counter()
            items.append(LoadItem(page.entry_id, build_article(page, extraction, taxonomy)))
            counts["tag_seconds"] += time.perf_counter() - tick
        tick = time.perf_counter()
        with engine.begin() as conn:
            # no wait for the WAL flush: a database crash can only lose whole chunks (articles together with
            # their entries' status), which the next run processes again from the stored pages
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            outcome = load_articles(conn, items, run_id=run_id, extractor_version=EXTRACTOR_VERSION,
                                    taxonomy_version=taxonomy.version, scheme=scheme_for(settings))
            for entry_id, error in failures:
                store.mark_entry_failed(conn, entry_id, run_id, "extract_failed", error)
        counts["load_seconds"] += time.perf_counter() - tick
        counts["extraction_failures"] += len(failures)
        counts["duplicates"] += outcome.duplicates
        counts["loaded"] += outcome.loaded
        counts["tagged"] += outcome.tagged
        counts["unchanged"] += outcome.unchanged
        counts["retagged"] += outcome.retagged
        if progress:
            progress(len(pages))
    # one line per stage, so a task log shows where the items went and the time went
    LOGGER.info("extract: %d pages, %d extraction failures, %.2f s", pages_read, counts["extraction_failures"],
                counts["extract_seconds"])
    LOGGER.info("tag: %d articles with a topic, %.2f s", counts["tagged"], counts["tag_seconds"])
    LOGGER.info("dedupe and load: %d loaded, %d duplicates, %d unchanged (%d re-tagged), %.2f s",
                counts["loaded"], counts["duplicates"], counts["unchanged"], counts["retagged"],
                counts["load_seconds"])
    return counts


def entries_to_process(engine: Engine, feed_ids: Sequence[int] | None, mode: str, since: datetime,
                       until: datetime) -> list[int]:
    """The entry ids a run processes: pages fetched and not processed yet (live), the archived pages of the
    interval (replay), or both. `feed_ids` None: every feed."""
    check_mode(mode)
    with engine.begin() as conn:
        waiting = [] if mode == "replay" or feed_ids is None else store.fetched_entry_ids(conn, feed_ids)
        archived = [] if mode == "live" else store.replay_entry_ids(conn, feed_ids, since, until)
    return list(dict.fromkeys(waiting + archived))


def process_feeds(engine: Engine, settings: Settings, run_id: int, feed_ids: Sequence[int],
                  progress: Progress | None = None, *, mode: str = "live", since: datetime | None = None,
                  until: datetime | None = None) -> dict[str, float]:
    """Process the pages of these feeds that the mode selects (what one mapped Airflow task does)."""
    if mode != "live" and (since is None or until is None):
        raise ValueError("a replay needs its interval")
    entry_ids = entries_to_process(engine, feed_ids, mode, since or datetime.min, until or datetime.max)
    return process_entries(engine, settings, run_id, entry_ids, progress, replay=mode != "live")


def sum_counts(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for part in parts:
        for name, value in part.items():
            totals[name] = totals.get(name, 0) + value
    return totals


def end_run(engine: Engine, run_id: int, parts: Iterable[dict[str, float]], error: str | None = None
            ) -> dict[str, float]:
    """Write the run's totals and status; returns the totals. What rows record (polls, new items, pages,
    failures, duplicates, articles loaded and tagged) is counted from the rows the run wrote, so work that a
    failed try committed before a retry counts too; timings and replay counts are the tasks' sums."""
    totals = sum_counts(parts)
    with engine.begin() as conn:
        totals.update(store.rows_of_run(conn, run_id))
        store.finish_run(conn, run_id, totals, "failed" if error else "success", error)
    LOGGER.info("finish: run %s %s: %s", run_id, "failed" if error else "success",
                ", ".join(f"{name} {totals.get(name, 0):g}" for name in (*store.RUN_COUNTERS, *store.RUN_TIMERS)))
    return totals


def _process_in_child(url: str, settings: Settings, run_id: int, entries: list[int | store.FetchedPage],
                      replay: bool = False) -> dict[str, float]:
    return process_entries(engine_for(url), settings, run_id, entries, replay=replay)


def _warm_child(url: str, settings: Settings) -> None:
    """Connect and bring the topics up to date while the parent polls feeds, not when the first pages wait."""
    _ready_taxonomy(engine_for(url), settings)


def run_interval(
    engine: Engine,
    settings: Settings,
    *,
    since: datetime,
    until: datetime,
    run_key: str,
    trigger: str = "cli",
    mode: str = "live",
    run_type: str | None = "cli",
    progress: Callable[[str, int], Progress] | None = None,
) -> tuple[int, dict[str, float]]:
    """A whole pass without Airflow, in one of MODES. With `settings.workers` > 1, worker processes extract,
    tag and load each chunk of pages as soon as it is stored (or, replaying, read back), so fetching overlaps
    extraction."""
    run_id = open_run(engine, run_key, trigger, since, until, mode=mode, run_type=run_type, settings=settings)
    batches = feed_batches(engine, settings, "live") if mode != "replay" else []
    all_feeds = [feed_id for batch in batches for feed_id in batch]
    parts: list[dict[str, float]] = []
    fetch_progress = process_progress = None
    if progress:  # the bars' totals cost a query, made only when someone watches
        with engine.begin() as conn:
            queued = len(store.entries_to_fetch(conn, all_feeds, settings.max_page_attempts,
                                                since - settings.lookback, until)) if batches else 0
            archived = len(store.replay_entry_ids(conn, None, since, until)) if mode != "live" else 0
        if batches:
            fetch_progress = progress("fetch", queued)
        process_progress = progress("replay" if mode == "replay" else "process", queued + archived)
    try:
        if settings.workers > 1:
            _fetch_and_process_in_parallel(engine, settings, run_id, batches, since, until, fetch_progress,
                                           process_progress, parts, mode)
        else:
            for batch in batches:
                parts.append(fetch_feeds(engine, settings, run_id, batch, since, until, fetch_progress))
            entry_ids = _run_entry_ids(engine, all_feeds, mode, since, until)
            parts.append(process_entries(engine, settings, run_id, entry_ids, process_progress, replay=mode != "live"))
    except Exception as exc:
        end_run(engine, run_id, parts, error=f"{type(exc).__name__}: {exc}")
        raise
    return run_id, end_run(engine, run_id, parts)


def _run_entry_ids(engine: Engine, feed_ids: Sequence[int], mode: str, since: datetime, until: datetime
                   ) -> list[int]:
    """What a whole run processes after fetching: the polled feeds' waiting pages, and the archived pages of the
    interval of every feed (disabled ones included) unless the mode is live."""
    waiting = entries_to_process(engine, feed_ids, "live", since, until) if mode != "replay" else []
    archived = entries_to_process(engine, None, "replay", since, until) if mode != "live" else []
    return list(dict.fromkeys(waiting + archived))


def _fetch_and_process_in_parallel(
    engine: Engine,
    settings: Settings,
    run_id: int,
    batches: list[list[int]],
    since: datetime,
    until: datetime,
    fetch_progress: Progress | None,
    process_progress: Progress | None,
    parts: list[dict[str, float]],
    mode: str = "live",
) -> None:
    """Fetch in this process while `settings.workers` processes extract what has been stored; then, replaying,
    hand them the archived pages of the interval. Every part's counts are appended to `parts`, also when a
    stage fails."""
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()  # the children must not inherit open connections
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(settings.workers, mp_context=context, initializer=forget_engines)
    replay = mode != "live"
    try:
        # the first submit forks every worker, before any thread of ours exists (forking beside running
        # threads is unsafe); the workers warm up while the feeds are polled
        for _ in range(settings.workers):
            pool.submit(_warm_child, url, settings)
        dispatcher = _Dispatcher(lambda ids: pool.submit(_process_in_child, url, settings, run_id, ids, replay),
                                 settings.workers)
        try:
            for batch in batches:
                parts.append(fetch_feeds(engine, settings, run_id, batch, since, until, fetch_progress,
                                         None if replay else dispatcher.add))
            # pages fetched by an earlier run that never got processed, and, replaying, the interval's archive
            dispatcher.add(_run_entry_ids(engine, [f for batch in batches for f in batch], mode, since, until))
        finally:
            dispatcher.close()
        for future, size in dispatcher.submitted():
            parts.append(future.result())
            if process_progress:
                process_progress(size)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # the run ends once nothing of it is still writing
        raise
    pool.shutdown(wait=False)  # every result is in: the workers exit on their own, the run need not wait


def _body_size(entry: int | store.FetchedPage) -> int:
    return len(entry.body) if isinstance(entry, store.FetchedPage) else 0


class _Dispatcher:
    """Hands stored pages to the worker processes from a thread of its own.

    While pages keep coming, an idle worker gets its share of what is waiting, and one chunk of at least
    HANDOVER_CHUNK pages queues behind busy workers; once fetching is over, chunks shrink with the work left
    (guided self-scheduling), so that the workers finish together instead of one idling through the other's
    last chunk. Chunks are at most PROCESS_CHUNK pages, one load transaction each.
    """

    def __init__(self, submit: Callable[[list[int | store.FetchedPage]], Future[dict[str, float]]], workers: int,
                 memory: int = HANDOVER_MEMORY) -> None:
        self._submit, self._workers = submit, workers
        self._ready = threading.Condition()
        self._queue: deque[int | store.FetchedPage] = deque()
        self._seen: set[int] = set()
        self._memory = memory  # bytes of page bodies the queue may still hold

        self._in_flight = 0
        self._closed = False
        self._submitted: list[tuple[Future[dict[str, float]], int]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dispatch", daemon=True)
        self._thread.start()

    def add(self, entries: Iterable[int | store.FetchedPage]) -> None:
        """Queue stored pages, in hand or by entry id (entries already queued are ignored); callable from any
        thread. Past the memory budget, a page in hand is queued by its id and read back by its worker."""
        with self._ready:
            for entry in entries:
                entry_id = entry.entry_id if isinstance(entry, store.FetchedPage) else entry
                if entry_id in self._seen:
                    continue
                self._seen.add(entry_id)
                if isinstance(entry, store.FetchedPage):
                    if len(entry.body) > self._memory:
                        entry = entry_id
                    else:
                        self._memory -= len(entry.body)
                self._queue.append(entry)
            self._ready.notify()

    def close(self) -> None:
        """No more pages will come: hand over the rest, largest pages first (so that a big page does not
        end the run on one worker while the other idles), and stop the thread once all is submitted."""
        with self._ready:
            self._closed = True
            self._queue = deque(sorted(self._queue, key=_body_size, reverse=True))
            self._ready.notify()
        self._thread.join()

    def submitted(self) -> list[tuple[Future[dict[str, float]], int]]:
        """Every chunk handed over, with its size; raises if handing over failed."""
        if self._error is not None:
            raise self._error
        return list(self._submitted)

    def _run(self) -> None:
        with self._ready:
            try:
                while True:
                    size = self._next_size()
                    while size:
                        chunk = [self._queue.popleft() for _ in range(size)]
                        self._memory += sum(len(e.body) for e in chunk if isinstance(e, store.FetchedPage))
                        future = self._submit(chunk)
                        self._in_flight += 1
                        future.add_done_callback(self._finished)
                        self._submitted.append((future, size))
                        size = self._next_size()
                    if self._closed and not self._queue:
                        return
                    self._ready.wait()
            except BaseException as exc:  # surfaced by submitted(); the caller's thread must not hang
                self._error = exc

    def _next_size(self) -> int:
        waiting = len(self._queue)
        if not waiting or self._in_flight > self._workers:  # every worker busy, one chunk queued behind
            return 0
        if self._closed:  # a share of what is left that shrinks towards one page
            return max(1, min(PROCESS_CHUNK, -(-waiting // (2 * self._workers))))
        if self._in_flight < self._workers:  # a worker is idle: its share of what is there now
            return min(PROCESS_CHUNK, -(-waiting // self._workers))
        return min(PROCESS_CHUNK, waiting) if waiting >= HANDOVER_CHUNK else 0

    def _finished(self, _future: Future[dict[str, float]]) -> None:
        with self._ready:
            self._in_flight -= 1
            self._ready.notify()

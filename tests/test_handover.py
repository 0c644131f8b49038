"""Handing fetched pages to extraction: how pages are stored (gzip kept as sent, else zlib) and how the
dispatcher splits them into chunks for the worker processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from pipeline import demosite, flow, store
from pipeline.settings import Settings
from tests.loopback import respond, serve

WEEK_START = datetime(2026, 11, 2, tzinfo=UTC)
WEEK_END = datetime(2026, 11, 9, tzinfo=UTC)
PAGE = ("<html><head><title>Plain page</title></head><body><article><h1>Plain page</h1>"
        + "".join(f"<p>Paragraph {n} of an article its server sends without compression, one of several that "
                  f"together make a body long enough to keep ({n * 7} words or so).</p>" for n in range(1, 13))
        + "</article></body></html>").encode()


def _feed(base: str) -> bytes:
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>{base}/</link>'
            f"<description>d</description><item><title>Plain page</title><link>{base}/plain.html</link>"
            f"<guid>plain-1</guid><pubDate>Tue, 03 Nov 2026 10:00:00 +0000</pubDate></item></channel></rss>"
            ).encode()


def test_gzip_pages_are_stored_as_sent_and_read_back_decoded(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    site = demosite.load_site()
    with engine.begin() as conn:
        demosite.register_feeds(conn, site, demo_base_url)
    run_id = flow.open_run(engine, "gzip", "cli", WEEK_START, WEEK_END)
    flow.fetch_feeds(engine, settings, run_id, flow.feed_batches(engine, settings)[0], WEEK_START, WEEK_END)
    with engine.connect() as conn:
        encodings = dict(conn.execute(text("SELECT b.encoding, count(*) FROM pages p "
                                           "JOIN archive_blobs b ON b.sha256 = p.sha256 GROUP BY 1")).all())
        entry_id, final_url = conn.execute(text("SELECT entry_id, final_url FROM pages ORDER BY 1 LIMIT 1")).one()
        page = store.fetched_pages(conn, [entry_id])[0]
    assert set(encodings) == {"gzip"}  # the demo site compresses, as news sites do
    status, _type, served = site.render(final_url.removeprefix(demo_base_url), demo_base_url)
    assert status == 200 and page.body == served and not page.unreadable


def test_pages_sent_uncompressed_are_stored_zlib_compressed_and_load(engine: Engine, settings: Settings) -> None:
    routes = {"/plain.html": respond(200, PAGE, headers={"Content-Type": "text/html; charset=utf-8"})}
    with serve(routes) as server:
        routes["/feed.xml"] = respond(200, _feed(server.base_url), headers={"Content-Type": "application/rss+xml"})
        with engine.begin() as conn:
            store.upsert_feed(conn, f"{server.base_url}/feed.xml", store.upsert_source(conn, "Plain"))
        _run_id, totals = flow.run_interval(engine, settings.with_overrides(workers=2), since=WEEK_START,
                                            until=WEEK_END, run_key="plain")
    with engine.connect() as conn:
        encodings = conn.execute(text("SELECT b.encoding FROM pages p JOIN archive_blobs b ON b.sha256 = p.sha256"
                                      )).scalars().all()
        titles = conn.execute(text("SELECT title FROM articles")).scalars().all()
    assert encodings == ["zlib"]
    assert totals["loaded"] == 1 and titles == ["Plain page"]


def _wait_for(condition: Callable[[], object], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


class _Recorder:
    """Runs handed-over chunks on a real thread pool, slowly enough that work queues up behind it."""

    def __init__(self, workers: int, seconds_per_page: float = 0.002) -> None:
        self.pool = ThreadPoolExecutor(workers)
        self.chunks: list[list[int]] = []
        self._lock = threading.Lock()
        self._pace = seconds_per_page

    def submit(self, ids: list[int]) -> Future[dict[str, float]]:
        with self._lock:
            self.chunks.append(list(ids))
        return self.pool.submit(self._work, ids)

    def _work(self, ids: list[int]) -> dict[str, float]:
        time.sleep(self._pace * len(ids))
        return {"loaded": len(ids)}


def test_dispatcher_hands_every_page_over_once_in_bounded_chunks_that_shrink_at_the_end() -> None:
    recorder = _Recorder(workers=2)
    dispatcher = flow._Dispatcher(recorder.submit, workers=2)
    dispatcher.add([0])  # the first page fetched
    _wait_for(lambda: recorder.chunks)
    for start in range(1, 200, 7):  # then a few at a time, some twice
        dispatcher.add(range(start, min(start + 7, 200)))
        dispatcher.add([start])
    dispatcher.close()
    results = [future.result() for future, _size in dispatcher.submitted()]
    recorder.pool.shutdown()
    handed = [entry_id for chunk in recorder.chunks for entry_id in chunk]
    assert sorted(handed) == list(range(200))
    assert sum(result["loaded"] for result in results) == 200
    sizes = [len(chunk) for chunk in recorder.chunks]
    assert max(sizes) <= flow.PROCESS_CHUNK
    assert sizes[0] == 1  # the first worker starts on what has arrived instead of waiting for a full chunk
    assert sizes[-3:] == [1, 1, 1]  # the last pages go one at a time, so the workers end together


def test_dispatcher_gives_idle_workers_partial_chunks_while_fetching_goes_on() -> None:
    recorder = _Recorder(workers=2)
    dispatcher = flow._Dispatcher(recorder.submit, workers=2)
    dispatcher.add([1, 2, 3])
    _wait_for(lambda: len(recorder.chunks) >= 2)
    # both idle workers get a share at once, although no full chunk has come in yet
    assert recorder.chunks == [[1, 2], [3]]
    dispatcher.close()
    recorder.pool.shutdown()


def test_a_failing_hand_over_surfaces_instead_of_hanging() -> None:
    def broken(_ids: list[int]) -> Future[dict[str, float]]:
        raise RuntimeError("worker pool is broken")

    dispatcher = flow._Dispatcher(broken, workers=2)
    dispatcher.add([1, 2, 3])
    dispatcher.close()
    with pytest.raises(RuntimeError, match="worker pool is broken"):
        dispatcher.submitted()


def test_a_feed_whose_poll_fails_still_retries_its_pending_pages(engine: Engine, settings: Settings) -> None:
    routes = {"/plain.html": respond(503, b"busy")}
    with serve(routes) as server:
        routes["/feed.xml"] = respond(200, _feed(server.base_url), headers={"Content-Type": "application/rss+xml"})
        with engine.begin() as conn:
            feed_id, _created = store.upsert_feed(conn, f"{server.base_url}/feed.xml",
                                                  store.upsert_source(conn, "Flaky"))
        first = flow.open_run(engine, "flaky-1", "cli", WEEK_START, WEEK_END)
        flow.fetch_feeds(engine, settings, first, [feed_id], WEEK_START, WEEK_END)
        routes["/feed.xml"] = respond(500, b"feed down")
        routes["/plain.html"] = respond(200, PAGE, headers={"Content-Type": "text/html"})
        second = flow.open_run(engine, "flaky-2", "cli", WEEK_START, WEEK_END + timedelta(hours=1))
        counts = flow.fetch_feeds(engine, settings, second, [feed_id], WEEK_START, WEEK_END)
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM feed_entries")).scalar_one()
    assert counts["feeds_failed"] == 1 and counts["pages_fetched"] == 1 and status == "fetched"


def _page(entry_id: int, size: int) -> store.FetchedPage:
    return store.FetchedPage(entry_id=entry_id, entry_url=f"http://example.test/{entry_id}",
                             final_url=f"http://example.test/{entry_id}", title=None, author=None,
                             published_at=None, source="Example", source_id=1, content_type="text/html",
                             body=b"x" * size)


def test_pages_in_hand_past_the_memory_budget_wait_by_id() -> None:
    recorder = _Recorder(workers=1, seconds_per_page=0.05)
    dispatcher = flow._Dispatcher(recorder.submit, workers=1, memory=2500)
    dispatcher.add([_page(1, 1000)])
    _wait_for(lambda: recorder.chunks)  # the first page is with the worker: the budget is whole again
    dispatcher.add([_page(n, 1000) for n in range(2, 6)])  # 1,000 bytes each against a budget of 2,500
    dispatcher.close()
    recorder.pool.shutdown()
    handed = [entry for chunk in recorder.chunks for entry in chunk]
    kinds = {(e.entry_id if isinstance(e, store.FetchedPage) else e): isinstance(e, store.FetchedPage)
             for e in handed}
    assert kinds == {1: True, 2: True, 3: True, 4: False, 5: False}


def test_pages_in_hand_load_exactly_as_pages_read_back(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    site = demosite.load_site()
    with engine.begin() as conn:
        demosite.register_feeds(conn, site, demo_base_url)
    run_id = flow.open_run(engine, "in-hand", "cli", WEEK_START, WEEK_END)
    in_hand: list[store.FetchedPage] = []
    flow.fetch_feeds(engine, settings, run_id, flow.feed_batches(engine, settings)[0], WEEK_START, WEEK_END,
                     on_stored=in_hand.extend)
    with engine.connect() as conn:
        read_back = {page.entry_id: page for page in store.fetched_pages(conn, [p.entry_id for p in in_hand])}
    assert in_hand and {page.entry_id for page in in_hand} == set(read_back)
    assert all(page == read_back[page.entry_id] for page in in_hand)

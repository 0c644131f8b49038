"""Politeness on a real PostgreSQL and loopback HTTP, asserted from the server's side: robots.txt, its cache,
Retry-After on pages and feeds, the feed body hash, Cache-Control, host delays across engines, host concurrency
and the User-Agent."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from itertools import pairwise

import pytest
from sqlalchemy import Engine, create_engine, text

from pipeline import flow, store
from pipeline.politeness import CachePolicy, cache_policy, retry_after
from pipeline.settings import Settings, SettingsError
from tests.concurrency import run_together
from tests.loopback import Route, respond, serve

SINCE, UNTIL = datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 9, tzinfo=UTC)
PUBLISHED = datetime(2026, 11, 5, 9, tzinfo=UTC)
OLD = datetime(2020, 1, 1, tzinfo=UTC)  # items outside the run's window: their pages are never fetched
RSS_TYPE = "application/rss+xml"
PAGE = b"<html><body><article><p>A page.</p></article></body></html>"
TOLERANCE = 0.03  # seconds: server-side start times against the delay between them


class Watch:
    """Wraps routes to record, on the server's side, when each request started and how many ran at once."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def wrap(self, routes: dict[str, Route], hold: float = 0.0) -> dict[str, Route]:
        return {path: self._watched(route, hold) for path, route in routes.items()}

    def _watched(self, route: Route, hold: float) -> Route:
        def watched(handler: BaseHTTPRequestHandler) -> None:
            with self._lock:
                self.starts.append((handler.path, time.monotonic()))
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                time.sleep(hold)
                route(handler)
            finally:
                with self._lock:
                    self.in_flight -= 1
        return watched

    def paths(self) -> list[str]:
        return [path for path, _at in self.starts]

    def start_of(self, path: str) -> float:
        return next(at for seen, at in self.starts if seen == path)

    def gaps(self, prefix: str = "/") -> list[float]:
        """Seconds between the starts of successive requests for paths beginning with `prefix`."""
        moments = sorted(at for path, at in self.starts if path.startswith(prefix))
        return [later - earlier for earlier, later in pairwise(moments)]


def _rss(links: list[str], first: datetime = PUBLISHED) -> bytes:
    """An RSS feed of `links`, dated a minute apart from `first` in list order (the order their pages are
    fetched in, when `first` is in the run's window)."""
    items = "".join(f"<item><title>{link.rsplit('/', 1)[-1]}</title><link>{link}</link>"
                    f"<pubDate>{format_datetime(first + timedelta(minutes=i))}</pubDate></item>"
                    for i, link in enumerate(links))
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'.encode()


def _site(base: dict[str, Route], feed: str, pages: list[str]) -> Callable[[str], dict[str, Route]]:
    """Routes of a site at a base URL not yet known: `base`, and the feed at `feed` listing `pages`."""
    return lambda url: {**base, feed: respond(200, _rss([f"{url}{path}" for path in pages]), RSS_TYPE)}


def _fetch(engine: Engine, settings: Settings, *feed_urls: str, key: str = "run") -> dict[str, float]:
    with engine.begin() as conn:
        source_id = store.upsert_source(conn, "Polite Desk")
        feed_ids = [store.upsert_feed(conn, url, source_id)[0] for url in feed_urls]
    run_id = flow.open_run(engine, key, "test", SINCE, UNTIL)
    return flow.fetch_feeds(engine, settings, run_id, feed_ids, SINCE, UNTIL)


def _entries(engine: Engine, base_url: str):
    with engine.begin() as conn:
        rows = conn.execute(text("SELECT url, status, error, retryable, attempts FROM feed_entries ORDER BY id")).all()
    return {row.url.removeprefix(base_url): row for row in rows}


def _robots(body: str) -> Route:
    return respond(200, body.encode(), "text/plain")


def test_a_page_disallowed_by_robots_is_never_requested_and_fails_for_good(engine: Engine,
                                                                         settings: Settings) -> None:
    robots = "User-agent: news-ingest\nDisallow: /private/\n\nUser-agent: *\nDisallow: /\n"
    routes = {"/robots.txt": _robots(robots), "/private/a": respond(200, PAGE), "/public/b": respond(200, PAGE)}
    with serve(routes) as server:
        server.routes.update(_site(routes, "/feed.xml", ["/private/a", "/public/b"])(server.base_url))
        _fetch(engine, settings, f"{server.base_url}/feed.xml")
    entries = _entries(engine, server.base_url)
    assert (entries["/private/a"].status, entries["/private/a"].error, entries["/private/a"].retryable) == (
        "page_failed", "disallowed by robots.txt", False)
    assert entries["/public/b"].status == "fetched"  # our group allows it although `*` may not
    assert "/private/a" not in server.hits and server.hits.count("/robots.txt") == 1


def test_robots_can_be_switched_off_for_your_own_sites(engine: Engine, settings: Settings) -> None:
    routes = {"/robots.txt": _robots("User-agent: *\nDisallow: /\n"), "/a": respond(200, PAGE)}
    with serve(routes) as server:
        server.routes.update(_site(routes, "/feed.xml", ["/a"])(server.base_url))
        _fetch(engine, settings.with_overrides(respect_robots=False), f"{server.base_url}/feed.xml")
    assert _entries(engine, server.base_url)["/a"].status == "fetched"
    assert "/robots.txt" not in server.hits


@pytest.mark.parametrize(("robots", "outcome"), [(respond(500, b"oops"), "unavailable"),
                                                 (respond(404, b"none"), "allow_all")])
def test_robots_errors_follow_rfc_9309(engine: Engine, settings: Settings, robots: Route, outcome: str) -> None:
    routes = {"/robots.txt": robots, "/a": respond(200, PAGE), "/b": respond(200, PAGE)}
    with serve(routes) as server:
        server.routes.update(_site(routes, "/feed.xml", ["/a", "/b"])(server.base_url))
        _fetch(engine, settings, f"{server.base_url}/feed.xml")
    entries = _entries(engine, server.base_url)
    with engine.begin() as conn:
        stored = conn.execute(text("SELECT outcome, status, extract(epoch FROM expires_at - fetched_at) AS kept "
                                   "FROM robots_txt")).one()
    assert server.hits.count("/robots.txt") == 1  # once for the host, not once per page
    if outcome == "unavailable":  # a server error: nothing fetched now, everything again later
        assert [(row.status, row.error, row.retryable) for row in entries.values()] == [
            ("page_failed", "robots.txt unavailable (HTTP 500); retried later", True)] * 2
        assert "/a" not in server.hits and "/b" not in server.hits
        assert (stored.outcome, stored.status, stored.kept) == ("unavailable", 500, 600)
    else:  # no robots.txt: everything allowed
        assert [row.status for row in entries.values()] == ["fetched", "fetched"]
        assert (stored.outcome, stored.status, stored.kept) == ("allow_all", 404, 24 * 3600)


def test_robots_is_kept_in_postgres_for_every_later_fetch_until_it_expires(engine: Engine,
                                                                          settings: Settings) -> None:
    routes = {"/robots.txt": _robots("User-agent: *\nAllow: /\n"), "/a": respond(200, PAGE),
              "/flaky": respond(503, b"busy")}
    with serve(routes) as server:
        server.routes.update(_site(routes, "/feed.xml", ["/a", "/flaky"])(server.base_url))
        feed = f"{server.base_url}/feed.xml"
        _fetch(engine, settings, feed, key="one")
        _fetch(engine, settings, feed, key="two")  # a new call: /flaky is retried, robots.txt comes from Postgres
        assert server.hits.count("/robots.txt") == 1 and server.hits.count("/flaky") == 2
        with engine.begin() as conn:
            conn.execute(text("UPDATE robots_txt SET expires_at = now() - interval '1 second'"))
        _fetch(engine, settings, feed, key="three")
    assert server.hits.count("/robots.txt") == 2 and server.hits.count("/flaky") == 3


@pytest.mark.parametrize("host_delay", [0.0, 0.05], ids=["in-process", "through-postgres"])
def test_a_429_with_retry_after_pauses_the_host_before_its_next_page(engine: Engine, settings: Settings,
                                                                     host_delay: float) -> None:
    watch = Watch()
    routes = watch.wrap({"/robots.txt": _robots("User-agent: *\nAllow: /\n"),
                         "/busy": respond(429, b"slow down", headers={"Retry-After": "1"}),
                         "/b": respond(200, PAGE), "/c": respond(200, PAGE)})
    with serve(routes) as server:
        server.routes.update(_site(routes, "/feed.xml", ["/busy", "/b", "/c"])(server.base_url))
        _fetch(engine, settings.with_overrides(page_concurrency=1, host_delay=host_delay),
               f"{server.base_url}/feed.xml")
    entries = _entries(engine, server.base_url)
    busy = entries["/busy"]
    assert (busy.status, busy.retryable) == ("page_failed", True)
    assert busy.error == "HTTP 429: asked to retry after 1 s (Retry-After); 127.0.0.1 paused"
    assert entries["/b"].status == entries["/c"].status == "fetched"
    assert watch.start_of("/b") - watch.start_of("/busy") >= 1 - TOLERANCE


def test_pages_whose_host_asks_for_a_longer_wait_than_allowed_are_left_to_a_later_run(
    engine: Engine, settings: Settings
) -> None:
    watch = Watch()
    later = format_datetime(datetime.now(UTC) + timedelta(minutes=2), usegmt=True)  # the HTTP-date form
    routes = watch.wrap({"/busy": respond(503, b"busy", headers={"Retry-After": later}),
                         "/b": respond(200, PAGE), "/c": respond(200, PAGE)})
    with serve(routes) as server:
        server.routes.update(_site(routes, "/feed.xml", ["/busy", "/b", "/c"])(server.base_url))
        started = time.monotonic()
        _fetch(engine, settings.with_overrides(page_concurrency=1, host_max_wait=5.0), f"{server.base_url}/feed.xml")
        took = time.monotonic() - started
    entries = _entries(engine, server.base_url)
    assert entries["/busy"].error.startswith("HTTP 503: asked to retry after 1") and entries["/busy"].retryable
    for path in ("/b", "/c"):
        assert (entries[path].status, entries[path].retryable) == ("page_failed", True)
        assert entries[path].error.startswith("deferred: the next turn at 127.0.0.1 is 1")
        assert entries[path].error.endswith("more than NEWS_HOST_MAX_WAIT (5 s); left to a later run")
        assert entries[path].attempts == 0  # never requested: no attempt used up
    assert entries["/busy"].attempts == 1
    assert "/b" not in watch.paths() and "/c" not in watch.paths() and took < 5


def test_a_host_paused_by_another_process_is_left_alone_and_its_feed_stays_due(engine: Engine,
                                                                             settings: Settings) -> None:
    with serve({"/feed.xml": respond(200, _rss([]), RSS_TYPE)}) as server:
        with engine.begin() as conn:  # what a 429 with Retry-After: 3600 seen by another task leaves behind
            conn.execute(text("INSERT INTO host_slots (host, next_at) VALUES ('127.0.0.1', now() + interval '1 hour')"))
        counts = _fetch(engine, settings.with_overrides(host_delay=0.05), f"{server.base_url}/feed.xml")
    with engine.begin() as conn:
        feed = conn.execute(text("SELECT last_polled_at, next_poll_at FROM feeds")).one()
    assert server.hits == [] and counts["feeds_polled"] == 0 and counts["feeds_failed"] == 0
    assert feed.last_polled_at is None and feed.next_poll_at is None  # due again for the next run


@pytest.mark.parametrize(("retry", "expected"), [
    ("600", 600), ("in 900 s", 900), ("99999999", 3600), ("soon", 0)], ids=["seconds", "date", "capped", "junk"])
def test_a_feed_answering_503_with_retry_after_is_not_polled_before_it(engine: Engine, settings: Settings,
                                                                        retry: str, expected: int) -> None:
    if retry == "in 900 s":
        retry = format_datetime(datetime.now(UTC) + timedelta(seconds=900), usegmt=True)
    with serve({"/feed.xml": respond(503, b"busy", headers={"Retry-After": retry})}) as server:
        _fetch(engine, settings.with_overrides(feed_backoff_max=timedelta(hours=1)), f"{server.base_url}/feed.xml")
    with engine.begin() as conn:
        feed = conn.execute(text("SELECT last_status, last_error, "
                                 "  extract(epoch FROM next_poll_at - last_polled_at) AS wait FROM feeds")).one()
    assert (feed.last_status, feed.last_error) == ("failed", "HTTP 503")
    assert abs(float(feed.wait) - expected) <= 2  # an HTTP-date is a whole second, measured from the Date header


def test_the_same_feed_bytes_are_not_parsed_again_but_changed_bytes_are_despite_the_same_etag(
    engine: Engine, settings: Settings
) -> None:
    first = _rss(["https://news.example/1"], OLD)
    routes = {"/feed.xml": respond(200, first, RSS_TYPE)}
    with serve(routes) as server:
        feed = f"{server.base_url}/feed.xml"
        one = _fetch(engine, settings, feed, key="one")
        two = _fetch(engine, settings, feed, key="two")  # the same bytes, no validators
        routes["/feed.xml"] = respond(200, _rss(["https://news.example/1", "https://news.example/2"], OLD), RSS_TYPE,
                                      headers={"ETag": '"same"'})
        three = _fetch(engine, settings, feed, key="three")
        routes["/feed.xml"] = respond(200, _rss(["https://news.example/3"], OLD), RSS_TYPE, headers={"ETag": '"same"'})
        four = _fetch(engine, settings, feed, key="four")  # validators unchanged, body changed: parsed
    with engine.begin() as conn:
        polls = conn.execute(text("SELECT ff.status, ff.items FROM feed_fetches ff JOIN ingest_runs r "
                                  "ON r.id = ff.run_id ORDER BY r.id")).all()
        entries = conn.execute(text("SELECT count(*) FROM feed_entries")).scalar_one()
    assert [tuple(poll) for poll in polls] == [("ok", 1), ("not_modified", 0), ("ok", 2), ("ok", 1)]
    assert [counts["entries_seen"] for counts in (one, two, three, four)] == [1, 0, 2, 1]
    assert entries == 3
    assert server.headers_seen[3].get("If-None-Match") == '"same"'  # the validators still made the GET conditional


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Cache-Control": "public, max-age=1800"}, 1800),
    ({"Cache-Control": "max-age=99999"}, 7200),
    ({"Expires": "in 900 s"}, 900),
    ({}, 600),
], ids=["max-age", "capped", "expires", "none"])
def test_a_feeds_freshness_is_a_floor_on_its_next_poll(engine: Engine, settings: Settings,
                                                       headers: dict[str, str], expected: int) -> None:
    if headers.get("Expires"):
        headers = {"Expires": format_datetime(datetime.now(UTC) + timedelta(seconds=900), usegmt=True)}
    settings = settings.with_overrides(feed_min_interval=timedelta(minutes=10), feed_max_interval=timedelta(hours=2))
    with serve({"/feed.xml": respond(200, _rss([]), RSS_TYPE, headers=headers)}) as server:
        _fetch(engine, settings, f"{server.base_url}/feed.xml")
    with engine.begin() as conn:
        wait = conn.execute(text("SELECT extract(epoch FROM next_poll_at - last_polled_at) FROM feeds")).scalar_one()
    assert abs(float(wait) - expected) <= 2


def test_a_no_store_feed_keeps_no_validators(engine: Engine, settings: Settings) -> None:
    headers = {"Cache-Control": "no-store", "ETag": '"v1"', "Last-Modified": "Mon, 02 Nov 2026 10:00:00 GMT"}
    with serve({"/feed.xml": respond(200, _rss([]), RSS_TYPE, headers=headers)}) as server:
        _fetch(engine, settings, f"{server.base_url}/feed.xml", key="one")
        _fetch(engine, settings, f"{server.base_url}/feed.xml", key="two")
    with engine.begin() as conn:
        feed = conn.execute(text("SELECT etag, last_modified, last_status FROM feeds")).one()
    assert tuple(feed) == (None, None, "not_modified")  # the body hash still spares the second parse
    assert "If-None-Match" not in server.headers_seen[1] and "If-Modified-Since" not in server.headers_seen[1]


def _two_processes(database_url: str, settings: Settings, watch: Watch, hold: float = 0.0) -> None:
    """Two fetch_feeds calls at once on engines of their own (as two mapped tasks would have), each polling
    its feed (/a.xml, /b.xml) and fetching its three pages from one host."""
    routes = {"/robots.txt": _robots("User-agent: *\nAllow: /\n"),
              **{f"/{name}{i}": respond(200, PAGE) for name in "ab" for i in range(3)}}
    engines = [create_engine(database_url), create_engine(database_url)]
    try:
        with serve(watch.wrap(routes, hold)) as server:
            for name in "ab":
                server.routes.update(watch.wrap(_site({}, f"/{name}.xml", [f"/{name}{i}" for i in range(3)])(
                    server.base_url)))
            errors = run_together([lambda e=e, name=name: _fetch(e, settings, f"{server.base_url}/{name}.xml",
                                                                  key=name)
                                   for e, name in zip(engines, "ab", strict=True)])
    finally:
        for engine in engines:
            engine.dispose()
    assert errors == []
    assert sorted(path for path in watch.paths() if path != "/robots.txt") == sorted(
        ["/a.xml", "/b.xml", *(f"/{name}{i}" for name in "ab" for i in range(3))])


def test_the_delay_between_requests_to_a_host_holds_across_separate_engines(database_url: str,
                                                                            settings: Settings) -> None:
    watch = Watch()
    _two_processes(database_url, settings.with_overrides(host_delay=0.2), watch)
    assert min(watch.gaps()) >= 0.2 - TOLERANCE


def test_the_concurrency_of_a_host_holds_across_separate_engines(database_url: str, settings: Settings) -> None:
    watch = Watch()
    # each process alone would run two at once; together they may run only two
    _two_processes(database_url, settings.with_overrides(host_delay=0.01, host_concurrency=2, page_concurrency=2),
                   watch, hold=0.3)
    assert watch.most_in_flight == 2


def test_a_crawl_delay_raises_the_host_delay_up_to_its_cap(engine: Engine, settings: Settings) -> None:
    watch = Watch()
    routes = watch.wrap({"/robots.txt": _robots("User-agent: *\nCrawl-delay: 5\n"),
                         **{f"/p{i}": respond(200, PAGE) for i in range(3)}})
    with serve(routes) as server:
        server.routes.update(_site({}, "/feed.xml", ["/p0", "/p1", "/p2"])(server.base_url))
        _fetch(engine, settings.with_overrides(host_delay=0.0, crawl_delay_max=0.25), f"{server.base_url}/feed.xml")
    gaps = watch.gaps("/p")
    assert len(gaps) == 2 and all(0.25 - TOLERANCE <= gap < 1 for gap in gaps)


def test_no_more_requests_to_a_host_run_at_once_than_its_concurrency(engine: Engine, settings: Settings) -> None:
    watch = Watch()
    routes = watch.wrap({f"/p{i}": respond(200, PAGE) for i in range(6)}, hold=0.2)
    with serve(routes) as server:
        server.routes.update(_site({}, "/feed.xml", [f"/p{i}" for i in range(6)])(server.base_url))
        _fetch(engine, settings.with_overrides(page_concurrency=4, host_concurrency=2, host_delay=0.0),
               f"{server.base_url}/feed.xml")
    with engine.begin() as conn:
        reservations = conn.execute(text("SELECT count(*) FROM host_slots")).scalar_one()
    assert len(watch.starts) == 6 and watch.most_in_flight == 2
    assert reservations == 0  # a delay of 0 reserves nothing in the database


def test_every_request_names_the_contact_in_its_user_agent(engine: Engine, settings: Settings) -> None:
    routes = {"/robots.txt": _robots("User-agent: *\nAllow: /\n"), "/a": respond(200, PAGE)}
    with serve(routes) as server:
        server.routes.update(_site(routes, "/feed.xml", ["/a"])(server.base_url))
        _fetch(engine, settings.with_overrides(contact="mailto:desk@news.example"), f"{server.base_url}/feed.xml")
    assert sorted(server.hits) == ["/a", "/feed.xml", "/robots.txt"]
    assert {seen["User-Agent"] for seen in server.headers_seen} == {"news-ingest/0.1 (+mailto:desk@news.example)"}


def test_identity_and_politeness_settings() -> None:
    assert Settings().identity == "news-ingest/0.1 (+https://example.invalid/news-ingest)"
    assert Settings(user_agent="bot/2 (+https://a.example)", contact="https://a.example").identity == (
        "bot/2 (+https://a.example)")  # a token already naming the contact is sent as it is
    assert Settings().robots_token == "news-ingest"
    parsed = Settings.from_env({"NEWS_HOST_DELAY": "0", "NEWS_HOST_CONCURRENCY": "3", "NEWS_RESPECT_ROBOTS": "no",
                                "NEWS_ROBOTS_MAX_AGE_HOURS": "2", "NEWS_CONTACT": "ops@news.example"})
    assert (parsed.host_delay, parsed.host_concurrency, parsed.respect_robots) == (0.0, 3, False)
    assert parsed.robots_max_age == timedelta(hours=2) and parsed.contact == "ops@news.example"
    with pytest.raises(SettingsError, match="NEWS_HOST_DELAY"):
        Settings.from_env({"NEWS_HOST_DELAY": "-1"})


def test_retry_after_and_cache_headers_are_read_as_http_says() -> None:
    date = "Mon, 02 Nov 2026 10:00:00 GMT"
    assert retry_after({"retry-after": "120"}) == timedelta(seconds=120)
    assert retry_after({"retry-after": "Mon, 02 Nov 2026 10:05:00 GMT", "date": date}) == timedelta(minutes=5)
    assert retry_after({"retry-after": "Mon, 02 Nov 2026 09:00:00 GMT", "date": date}) == timedelta(0)
    assert retry_after({"retry-after": "later"}) is None and retry_after({}) is None
    assert cache_policy({"cache-control": 'no-cache, max-age="60"'}) == CachePolicy(timedelta(seconds=60))
    assert cache_policy({"cache-control": "no-store"}) == CachePolicy(None, no_store=True)
    assert cache_policy({"expires": "Mon, 02 Nov 2026 11:00:00 GMT", "date": date}) == CachePolicy(
        timedelta(hours=1))
    assert cache_policy({"expires": "0", "date": date}) == CachePolicy(timedelta(0))  # unreadable: stale
    assert cache_policy({"cache-control": "max-age=60", "expires": "0"}).fresh_for == timedelta(seconds=60)

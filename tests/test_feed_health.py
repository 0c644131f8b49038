"""Feed health on a real PostgreSQL and real HTTP: failure streaks, backoff, auto-disabling, 410 Gone,
re-enabling, intervals fitted to the publishing rate, and what `feeds list` and feed_health show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from sqlalchemy import Engine, text

from pipeline import flow, store
from pipeline.cli import main
from pipeline.polling import adapted_interval, backoff_delay, disable_reason
from pipeline.settings import Settings
from tests.loopback import respond, serve

# a window long before the items: polls are what these tests watch, no page is fetched
SINCE, UNTIL = datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)
NEWEST = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _rss(gap: timedelta | None, count: int = 5) -> bytes:
    items = "".join(
        f"<item><title>item {i}</title><link>https://news.example/{i}</link>"
        + (f"<pubDate>{format_datetime(NEWEST - i * gap)}</pubDate>" if gap else "") + "</item>"
        for i in range(count))
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'.encode()


def _register(engine: Engine, *urls: str) -> None:
    with engine.begin() as conn:
        source_id = store.upsert_source(conn, "Health Desk")
        for url in urls:
            store.upsert_feed(conn, url, source_id)


def _run(engine: Engine, settings: Settings, key: str) -> None:
    flow.run_interval(engine, settings, since=SINCE, until=UNTIL, run_key=key)


def _feed(engine: Engine, url: str):
    with engine.begin() as conn:
        return conn.execute(text(
            "SELECT enabled, disabled_reason, consecutive_failures, poll_interval_seconds, last_status, "
            "  extract(epoch FROM next_poll_at - last_polled_at) AS wait FROM feeds WHERE url = :url"
        ), {"url": url}).one()


def _come_due(engine: Engine) -> None:
    """Time passes: every feed's next poll time is reached (the test cannot wait hours)."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE feeds SET next_poll_at = now() - interval '1 second'"))


def test_a_failing_feed_backs_off_exponentially_up_to_the_cap_and_is_skipped_meanwhile(
    engine: Engine, settings: Settings
) -> None:
    settings = settings.with_overrides(feed_backoff=timedelta(hours=1), feed_backoff_max=timedelta(hours=3))
    with serve({"/feed.xml": respond(500, b"oops")}) as server:
        url = f"{server.base_url}/feed.xml"
        _register(engine, url)
        _run(engine, settings, "one")
        first = _feed(engine, url)
        _run(engine, settings, "skipped")
        assert server.hits == ["/feed.xml"]  # the second run did not poll the feed
        waits = [first.wait]
        for key in ("two", "three", "four"):
            _come_due(engine)
            _run(engine, settings, key)
            waits.append(_feed(engine, url).wait)
        with engine.begin() as conn:
            polls = conn.execute(text("SELECT r.run_key, ff.status, ff.error FROM feed_fetches ff "
                                      "JOIN ingest_runs r ON r.id = ff.run_id ORDER BY ff.id")).all()
    assert first.consecutive_failures == 1 and first.last_status == "failed"
    assert [round(w / 3600, 2) for w in waits] == [1, 2, 3, 3]
    assert [(p.run_key, p.status, p.error) for p in polls] == [
        (key, "failed", "HTTP 500") for key in ("one", "two", "three", "four")]
    assert _feed(engine, url).consecutive_failures == 4 and _feed(engine, url).enabled


def test_a_feed_is_disabled_after_too_many_failures_and_enable_starts_it_afresh(
    engine: Engine, settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings.with_overrides(feed_max_failures=3)
    routes = {"/feed.xml": respond(200, b"<html><body>a page, not a feed</body></html>")}
    with serve(routes) as server:
        url = f"{server.base_url}/feed.xml"
        _register(engine, url)
        for key in ("one", "two", "three", "four"):
            _run(engine, settings, key)
        assert len(server.hits) == 3  # disabled by the third failure: the fourth run left it alone
        disabled = _feed(engine, url)
        assert not disabled.enabled
        assert disabled.disabled_reason == ("3 consecutive failed polls; last: not a usable feed: "
                                            "NonXMLContentType: text/html; charset=utf-8 is not an XML media type")
        monkeypatch.setenv("NEWS_DATABASE_URL", database_url)
        assert main(["feeds", "list"]) == 0
        listing = capsys.readouterr().out
        assert " disabled " in listing and "(3 consecutive failed polls; last: not a usable feed" in listing
        with engine.begin() as conn:
            health = conn.execute(text("SELECT health, disabled_reason, failure_streak, consecutive_failures "
                                       "FROM feed_health")).one()
        assert tuple(health) == ("disabled", disabled.disabled_reason, 3, 3)

        assert main(["feeds", "enable", url]) == 0
        enabled = _feed(engine, url)
        assert enabled.enabled and enabled.consecutive_failures == 0 and enabled.disabled_reason is None
        routes["/feed.xml"] = respond(200, _rss(timedelta(hours=2)), content_type="application/rss+xml")
        _run(engine, settings, "five")
        assert len(server.hits) == 4 and _feed(engine, url).last_status == "ok"


def test_410_gone_disables_a_feed_at_once(engine: Engine, settings: Settings) -> None:
    with serve({"/gone.xml": respond(410, b"gone"), "/error.xml": respond(500, b"")}) as server:
        gone, error = f"{server.base_url}/gone.xml", f"{server.base_url}/error.xml"
        _register(engine, gone, error)
        _run(engine, settings, "one")
        _run(engine, settings, "two")
    assert server.hits.count("/gone.xml") == 1 and server.hits.count("/error.xml") == 2
    row = _feed(engine, gone)
    assert not row.enabled and row.disabled_reason == "HTTP 410 Gone: the publisher removed the feed"
    assert _feed(engine, error).enabled and _feed(engine, error).consecutive_failures == 2


def test_the_poll_interval_follows_the_publishing_rate_within_bounds(engine: Engine, settings: Settings) -> None:
    settings = settings.with_overrides(feed_min_interval=timedelta(minutes=10), feed_max_interval=timedelta(hours=4),
                                       lookback=timedelta(hours=6))
    routes = {"/busy.xml": respond(200, _rss(timedelta(hours=2)), content_type="application/rss+xml"),
              "/daily.xml": respond(200, _rss(timedelta(days=1)), content_type="application/rss+xml"),
              "/wire.xml": respond(200, _rss(timedelta(minutes=3)), content_type="application/rss+xml"),
              "/undated.xml": respond(200, _rss(None), content_type="application/rss+xml")}
    with serve(routes) as server:
        urls = {path: f"{server.base_url}{path}" for path in routes}
        _register(engine, *urls.values())
        _run(engine, settings, "one")
        _run(engine, settings, "two")  # at once: no feed is due yet
        intervals = {path: _feed(engine, url).poll_interval_seconds for path, url in urls.items()}
        waits = {path: _feed(engine, url).wait for path, url in urls.items()}
    assert intervals == {"/busy.xml": 3600, "/daily.xml": 4 * 3600, "/wire.xml": 600, "/undated.xml": 600}
    assert {path: round(wait) for path, wait in waits.items()} == intervals
    assert sorted(server.hits) == sorted(routes)  # each polled once
    capped = settings.with_overrides(lookback=timedelta(hours=2))
    assert flow.adapted_interval is adapted_interval
    assert adapted_interval([NEWEST, NEWEST - timedelta(days=1)], capped.feed_min_interval,
                            min(capped.feed_max_interval, capped.lookback)) == timedelta(hours=2)


def test_a_failure_streak_ends_with_the_first_good_poll(engine: Engine, settings: Settings) -> None:
    routes = {"/feed.xml": respond(503, b"busy")}
    with serve(routes) as server:
        url = f"{server.base_url}/feed.xml"
        _register(engine, url)
        _run(engine, settings, "one")
        _run(engine, settings, "two")
        assert _feed(engine, url).consecutive_failures == 2
        routes["/feed.xml"] = respond(200, _rss(timedelta(hours=1)), content_type="application/rss+xml")
        _run(engine, settings, "three")
    row = _feed(engine, url)
    assert row.consecutive_failures == 0 and row.last_status == "ok" and row.enabled


def test_backoff_and_disabling_rules() -> None:
    base, cap = timedelta(minutes=5), timedelta(hours=6)
    assert [backoff_delay(n, base, cap) for n in (1, 2, 3, 7, 8, 500)] == [
        base, 2 * base, 4 * base, 64 * base, cap, cap]
    assert disable_reason(410, 1, 10, "HTTP 410") == "HTTP 410 Gone: the publisher removed the feed"
    assert disable_reason(500, 9, 10, "HTTP 500") is None
    assert disable_reason(500, 10, 10, "HTTP 500") == "10 consecutive failed polls; last: HTTP 500"
    assert adapted_interval([None, None], timedelta(minutes=10), timedelta(hours=4)) == timedelta(minutes=10)


def test_feed_health_keeps_its_columns_and_appends_the_new_ones(engine: Engine) -> None:
    with engine.begin() as conn:
        columns = list(conn.execute(text("SELECT * FROM feed_health LIMIT 0")).keys())
    assert columns == [
        "feed_id", "url", "source", "title", "enabled", "disabled_reason", "disabled_at", "health", "last_status",
        "last_http_status", "last_error", "last_polled_at", "last_success_at", "failure_streak", "polls",
        "failed_polls", "median_latency_ms", "items_per_day", "last_item_at",
        "consecutive_failures", "next_poll_at", "poll_interval_seconds"]

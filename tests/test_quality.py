"""Data-quality gates and run health on a real PostgreSQL after real passes over the demo site: what each check
measures, when it warns or fails and what it says, and what feed_health and run_health show."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from pipeline import demosite, flow, quality
from pipeline.cli import main
from pipeline.settings import Settings

WEEK_START = datetime(2026, 11, 2, tzinfo=UTC)
WEEK_END = datetime(2026, 11, 9, tzinfo=UTC)
ERROR_FEED = "/glitch/feeds/error.xml"
TRUNCATED_FEED = "/glitch/feeds/truncated.xml"


def _demo_run(engine: Engine, settings: Settings, base_url: str, key: str = "week") -> int:
    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), base_url, include_broken=True)
    return flow.run_interval(engine, settings, since=WEEK_START, until=WEEK_END, run_key=key)[0]


def _checks(engine: Engine, settings: Settings, run_id: int) -> dict[str, quality.CheckResult]:
    with engine.begin() as conn:
        return {result.name: result for result in quality.run_checks(conn, settings, run_id)}


@pytest.mark.parametrize(("hits", "total", "outcome", "words"), [
    (0, 0, "passed", "nothing to check"),
    (1, 100, "passed", "warn above 0.05, fail above 0.5"),
    (6, 100, "warned", "0.0600 (6 of 100 things) is above the warn threshold 0.05 (NEWS_QC_EMPTY_BODIES_WARN)"),
    (60, 100, "failed", "0.6000 (60 of 100 things) is above the fail threshold 0.5 (NEWS_QC_EMPTY_BODIES_FAIL)"),
    (6, 9, "warned", "9 rows are fewer than NEWS_QC_MIN_ROWS=10"),  # a breach on few rows only warns
])
def test_a_check_compares_its_share_with_both_thresholds(hits: int, total: int, outcome: str, words: str) -> None:
    check = quality.Check("empty_bodies", "things", "SELECT 1")
    result = quality.judge(check, hits, total, 0.05, 0.5, min_rows=10)
    assert result.outcome == outcome and words in result.message
    assert result.message.startswith(f"quality check empty_bodies {outcome}")


def test_a_minimum_check_breaches_below_its_threshold() -> None:
    check = quality.Check("topic_coverage", "tagged articles", "SELECT 1", breach="below")
    assert quality.judge(check, 0, 50, 0.1, 0.02, 10).outcome == "failed"
    assert quality.judge(check, 3, 50, 0.1, 0.02, 10).outcome == "warned"
    assert quality.judge(check, 30, 50, 0.1, 0.02, 10).outcome == "passed"
    assert "below the fail threshold 0.02 (NEWS_QC_TOPIC_COVERAGE_FAIL)" in quality.judge(check, 0, 50, 0.1, 0.02,
                                                                                          10).message


def test_the_demo_week_warns_about_its_empty_page_and_broken_feed(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    run_id = _demo_run(engine, settings, demo_base_url)
    results = _checks(engine, settings, run_id)
    assert set(results) == set(quality.CHECK_NAMES)
    # 52 loaded + 4 duplicates + the video page without text
    empty = results["empty_bodies"]
    assert (empty.outcome, empty.hits, empty.total) == ("warned", 1, 57)
    assert "0.0175 (1 of 57 processed feed items whose page gave no article text) is above the warn threshold " \
           "0.01 (NEWS_QC_EMPTY_BODIES_WARN)" in empty.message
    feeds = results["failed_feeds"]  # the HTTP 500 feed; the truncated one is malformed, its items used
    assert (feeds.outcome, feeds.hits, feeds.total, feeds.value) == ("warned", 1, 10, 0.1)
    assert (results["duplicate_ratio"].hits, results["duplicate_ratio"].total) == (4, 56)
    assert results["missing_dates"].outcome == results["future_dates"].outcome == "passed"
    assert results["missing_dates"].total == 52 and results["missing_dates"].hits == 0
    coverage = results["topic_coverage"]
    assert coverage.outcome == "passed" and coverage.total == 52 and 0 < coverage.hits < 52
    with engine.connect() as conn:
        run = conn.execute(text("SELECT * FROM run_health WHERE run_id = :id"), {"id": run_id}).one()
        stored = conn.execute(text("SELECT check_name, outcome FROM quality_checks WHERE run_id = :id"),
                              {"id": run_id}).all()
    assert run.quality_status == "warned" and run.status == "success"
    assert [m.split(":")[0] for m in run.quality_messages] == ["quality check empty_bodies warned",
                                                              "quality check failed_feeds warned"]
    assert dict(stored) == {name: result.outcome for name, result in results.items()}
    # every stage's counts and timings are filled
    assert (run.feeds_polled, run.feeds_failed, run.loaded, run.duplicates, run.extraction_failures,
            run.pages_failed) == (10, 1, 52, 4, 1, 1)
    assert run.fetch_seconds > 0 and run.extract_seconds > 0 and run.load_seconds > 0 and run.tag_seconds > 0
    assert run.quality_seconds > 0 and run.wall_seconds > 0


def test_a_breach_of_a_fail_threshold_fails_with_the_check_value_and_threshold(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    run_id = _demo_run(engine, settings, demo_base_url)
    strict = settings.with_overrides(qc_empty_bodies_fail=0.01)
    with engine.begin() as conn:
        result = quality.run_check(conn, strict, run_id, "empty_bodies")
    assert result.outcome == "failed"
    with pytest.raises(quality.QualityGateError, match=r"^quality check empty_bodies failed: 0\.0175 \(1 of 57 .*"
                       r"above the fail threshold 0\.01 \(NEWS_QC_EMPTY_BODIES_FAIL\)$"):
        quality.raise_on_failure(result)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT quality_status FROM ingest_runs WHERE id = :id"),
                            {"id": run_id}).scalar_one() == "failed"


def test_missing_and_future_dates_are_counted_on_the_articles_a_run_loaded(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    run_id = _demo_run(engine, settings, demo_base_url)
    with engine.begin() as conn:
        ids = [row[0] for row in conn.execute(text("SELECT id FROM articles ORDER BY id LIMIT 5"))]
        conn.execute(text("UPDATE articles SET published_at = NULL WHERE id = ANY(:ids)"), {"ids": ids[:3]})
        # a time-zone slip: published nine hours after it was stored
        conn.execute(text("UPDATE articles SET published_at = updated_at + interval '9 hours' WHERE id = ANY(:ids)"),
                     {"ids": ids[3:]})
    results = _checks(engine, settings.with_overrides(qc_future_dates_fail=0.02), run_id)
    assert (results["missing_dates"].outcome, results["missing_dates"].hits) == ("warned", 3)
    assert "3 of 52 loaded articles without a publication time" in results["missing_dates"].message
    assert (results["future_dates"].outcome, results["future_dates"].hits) == ("failed", 2)


def test_a_rerun_that_changed_nothing_has_nothing_to_check_but_its_feed_polls(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    _demo_run(engine, settings, demo_base_url, "first")
    second = _demo_run(engine, settings, demo_base_url, "second")
    results = _checks(engine, settings, second)
    assert results["empty_bodies"].total == 0 and results["empty_bodies"].outcome == "passed"
    assert "nothing to check" in results["topic_coverage"].message
    assert results["failed_feeds"].outcome == "warned"  # the broken feed failed again


def test_feed_health_shows_the_broken_feed_failing_and_a_disabled_feed_with_its_reason(
    engine: Engine, settings: Settings, demo_base_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    _demo_run(engine, settings, demo_base_url, "first")
    _demo_run(engine, settings, demo_base_url, "second")
    with engine.connect() as conn:
        health = {row.url.removeprefix(demo_base_url): row for row in conn.execute(text("SELECT * FROM feed_health"))}
    broken = health.pop(ERROR_FEED)
    assert (broken.health, broken.failure_streak, broken.last_error, broken.last_http_status) == (
        "failing", 2, "HTTP 500", 500)
    assert broken.last_success_at is None and broken.polls == broken.failed_polls == 2
    assert health.pop(TRUNCATED_FEED).health == "malformed"
    assert len(health) == 8 and all(row.health == "ok" and row.failure_streak == 0 for row in health.values())
    assert all(row.items_per_day > 0 and row.median_latency_ms is not None and row.last_success_at
               for row in health.values())

    monkeypatch.setenv("NEWS_DATABASE_URL", str(engine.url.render_as_string(hide_password=False)))
    url = demo_base_url + ERROR_FEED
    assert main(["feeds", "disable", url, "--reason", "HTTP 500 for two days; outlet notified"]) == 0
    with engine.connect() as conn:
        row = conn.execute(text("SELECT health, disabled_reason, disabled_at FROM feed_health WHERE url = :u"),
                           {"u": url}).one()
    assert row.health == "disabled" and row.disabled_reason == "HTTP 500 for two days; outlet notified"
    assert row.disabled_at is not None
    assert main(["feeds", "enable", url]) == 0
    with engine.connect() as conn:
        row = conn.execute(text("SELECT health, disabled_reason FROM feed_health WHERE url = :u"), {"u": url}).one()
    assert (row.health, row.disabled_reason) == ("failing", None)
    capsys.readouterr()

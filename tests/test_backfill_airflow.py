"""`airflow backfill create` over the demo week with a real scheduler: the runs succeed, the rows land,
reprocessing the completed runs changes no row, and a replay backfill after a rule change (mode param in the
run conf) rewrites topic rows only."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from pipeline import demosite
from pipeline.topics import DEFAULT_TAXONOMY
from tests.airflow_cluster import airflow_cluster
from tests.conftest import LOOPBACK_ENV, _admin
from tests.test_flow import snapshot
from tests.test_retag import edited_taxonomy

DAG_ID = "news_ingest"
# daily runs: logical dates 2026-11-03, -04 and -05, each covering its own day of the demo week
FROM_DATE, TO_DATE = "2026-11-03", "2026-11-05"
RUNS = 3
LOOKBACK = timedelta(hours=6)  # a run also keeps items published this long before its interval (NEWS_LOOKBACK_HOURS)


@pytest.fixture
def metadata_dsn(pg_admin_url: str) -> Iterator[str]:
    """An empty database on the test server for Airflow's own metadata, dropped afterwards."""
    name = f"airflow_test_{uuid.uuid4().hex[:12]}"
    _admin(pg_admin_url, f'CREATE DATABASE "{name}"')
    yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _news_env(database_url: str, data_dir: Path, taxonomy: Path) -> dict[str, str]:
    """What the cluster's processes need on top of Airflow's own settings: this test's news database, the demo
    site reachable, daily runs, and no retries, backoff or held-back polls."""
    return {
        **LOOPBACK_ENV,
        "NEWS_ALLOW_PRIVATE_ADDRESSES": "false",
        "NEWS_ALLOWED_NETWORKS": "127.0.0.0/8",  # the demo site; nothing else private
        "NEWS_DATABASE_URL": database_url,
        "NEWS_DATA_DIR": str(data_dir),
        "NEWS_SCHEDULE": "@daily",
        "NEWS_LOOKBACK_HOURS": str(LOOKBACK.total_seconds() / 3600),
        "NEWS_TASK_RETRIES": "0",  # a failing task fails its run at once, with its reason in the log
        "NEWS_TAXONOMY": str(taxonomy),  # a copy of the packaged one, edited before the replay
        # only the backfill's runs: unpausing would also queue the latest scheduled run (catchup is off), which
        # covers no demo date and would only compete for the two task slots
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "false",
    }


def _table_rows(engine: Engine) -> dict[str, list[tuple]]:
    """The analyst tables in full, and the feed entries on their natural key without the columns a re-poll
    legitimately touches (which run saw an entry last, and when)."""
    rows = snapshot(engine)
    with engine.connect() as conn:
        rows["feed_entries"] = [tuple(r) for r in conn.execute(text(
            "SELECT f.url AS feed_url, e.entry_key, e.url, e.guid, e.title, e.author, e.published_at, e.status, "
            "e.attempts, e.retryable, e.error, e.article_id, e.first_run_id, e.created_at "
            "FROM feed_entries AS e JOIN feeds AS f ON f.id = e.feed_id ORDER BY f.url, e.entry_key"))]
    return rows


def _demo_urls_published(base_url: str, since: datetime, until: datetime) -> set[str]:
    """Canonical URLs of the demo articles published in [since, until)."""
    site = demosite.load_site()
    return {a.canonical_url(base_url) for a in site.articles if since <= a.published_at < until}


@pytest.mark.slow
def test_backfill_create_runs_on_the_scheduler_and_reprocessing_completed_runs_changes_no_row(
    engine: Engine, database_url: str, metadata_dsn: str, demo_base_url: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), demo_base_url)
    taxonomy = tmp_path / "taxonomy.yaml"
    taxonomy.write_text(DEFAULT_TAXONOMY.read_text(encoding="utf-8"), encoding="utf-8")
    with airflow_cluster(tmp_path / "airflow", metadata_dsn, DAG_ID,
                         _news_env(database_url, tmp_path / "data", taxonomy)) as cluster:
        cluster.unpause(DAG_ID)  # backfill runs stay queued while the DAG is paused

        started = time.monotonic()
        first_id = cluster.backfill(DAG_ID, FROM_DATE, TO_DATE)
        runs = cluster.wait_for_runs(DAG_ID, RUNS, timeout=300, backfill_id=first_id)
        first_seconds = time.monotonic() - started

        assert cluster.runs(DAG_ID) == runs  # nothing but the backfill ran
        assert [(r.run_type, r.state) for r in runs] == [("backfill", "success")] * RUNS, runs
        intervals = [(r.data_interval_start, r.data_interval_end) for r in runs]
        assert intervals == [(datetime(2026, 11, day, tzinfo=UTC), datetime(2026, 11, day + 1, tzinfo=UTC))
                             for day in (3, 4, 5)]
        ingest_runs = _ingest_runs(engine)
        assert [(row.run_key, row.trigger, row.status, row.interval_start, row.interval_end)
                for row in ingest_runs] == [
            (f"{DAG_ID}/{r.run_id}", "airflow", "success", r.data_interval_start, r.data_interval_end) for r in runs]
        expected = _demo_urls_published(demo_base_url, intervals[0][0] - LOOKBACK, intervals[-1][1])
        with engine.connect() as conn:
            stored = [row.canonical_url for row in conn.execute(text("SELECT canonical_url FROM articles"))]
        assert expected and sorted(stored) == sorted(expected)
        assert sum(row.loaded for row in ingest_runs) == len(expected)  # each article inserted by one run only
        before = _table_rows(engine)

        started = time.monotonic()
        second_id = cluster.backfill(DAG_ID, FROM_DATE, TO_DATE, reprocess_behavior="completed")
        rerun = cluster.wait_for_runs(DAG_ID, RUNS, timeout=300, backfill_id=second_id)
        second_seconds = time.monotonic() - started

        # the completed runs are cleared and run again under their own run ids, so into their own ingest_runs rows
        assert [(r.run_id, r.run_type, r.state) for r in rerun] == [(r.run_id, "backfill", "success") for r in runs]
        assert [(row.run_key, row.status, row.loaded) for row in _ingest_runs(engine)] == [
            (row.run_key, "success", 0) for row in ingest_runs]
        assert _table_rows(engine) == before

        # the rules change: replay the same dates from the archive, the mode chosen by the run conf
        taxonomy.write_text(edited_taxonomy(tmp_path).read_text(encoding="utf-8"), encoding="utf-8")
        started = time.monotonic()
        third_id = cluster.backfill(DAG_ID, FROM_DATE, TO_DATE, reprocess_behavior="completed",
                                    conf={"mode": "replay"})
        replayed = cluster.wait_for_runs(DAG_ID, RUNS, timeout=300, backfill_id=third_id)
        third_seconds = time.monotonic() - started
        assert [(r.run_id, r.state) for r in replayed] == [(r.run_id, "success") for r in runs]
        with engine.connect() as conn:
            modes = conn.execute(text("SELECT mode, run_type, status, feeds_polled, replayed, loaded "
                                      "FROM ingest_runs ORDER BY interval_start")).all()
        assert [(m.mode, m.run_type, m.status, m.feeds_polled, m.loaded) for m in modes] == [
            ("replay", "backfill", "success", 0, 0)] * RUNS
        with engine.connect() as conn:  # the archived pages of the items published in the three intervals
            archived = conn.execute(text(
                "SELECT count(*) FROM pages p JOIN feed_entries e ON e.id = p.entry_id "
                "WHERE e.published_at >= :since AND e.published_at < :until"
            ), {"since": intervals[0][0], "until": intervals[-1][1]}).scalar_one()
        assert archived and sum(m.replayed for m in modes) == archived
        after = _table_rows(engine)
        assert [table for table in before if before[table] != after[table]] == ["article_topics", "topics"]
        print(f"\nbackfill of {RUNS} runs: {first_seconds:.1f} s; reprocessing them: {second_seconds:.1f} s; "
              f"replaying them: {third_seconds:.1f} s (each after the wait for Airflow to close the one before)")


def _ingest_runs(engine: Engine) -> list[Any]:
    """The news database's ingest_runs rows, by interval."""
    with engine.connect() as conn:
        return conn.execute(text("SELECT run_key, trigger, status, interval_start, interval_end, loaded "
                                 "FROM ingest_runs ORDER BY interval_start")).all()

"""Real Airflow runs (`dag.test()`) of news_ingest over the demo site with its broken feed and empty page: the
quality gates warn or fail the run with a clear message, the failure alert goes out, the Asset event is emitted
only when the gates held, and the downstream news_aggregates DAG refreshes the analyst aggregates."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from pipeline import demosite
from pipeline.settings import PROJECT_ROOT
from tests.test_alerts import webhook_receiver
from tests.test_dag_run import WEEK

ASSET_URI = "news-ingest://news_db/articles"
ERROR_FEED = "/glitch/feeds/error.xml"


def _dag(dag_id: str, file: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / file))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def _states(dag_run) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance.task_id, TaskInstance.state).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id).all()
    return {task_id: str(state) for task_id, state in rows}


def _asset_events() -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [event.extra for event in session.query(AssetEvent).join(
            AssetModel, AssetModel.id == AssetEvent.asset_id).filter(AssetModel.uri == ASSET_URI)
            .order_by(AssetEvent.id)]


def test_gates_warn_on_the_demo_week_then_publish_and_the_downstream_dag_refreshes(
    airflow_db, airflow_env: Path, engine: Engine, demo_base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.utils.state import DagRunState

    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), demo_base_url, include_broken=True)
    events_before = len(_asset_events())
    with webhook_receiver() as (url, posted):
        monkeypatch.setenv("NEWS_ALERT_WEBHOOK", url)
        run = _dag("news_ingest", "news_ingest.py").test(
            logical_date=datetime(2026, 11, 9, 2, tzinfo=UTC), run_conf=WEEK, conn_file_path=str(airflow_env))
    assert run.state == DagRunState.SUCCESS
    states = _states(run)
    assert states["publish"] == "success"
    assert all(states[f"check_{name}"] == "success" for name in (
        "empty_bodies", "missing_dates", "future_dates", "duplicate_ratio", "failed_feeds", "topic_coverage"))
    assert posted == []  # nothing failed, nothing alerted
    with engine.connect() as conn:
        ingest = conn.execute(text("SELECT * FROM run_health")).one()
        checks = dict(conn.execute(text("SELECT check_name, message FROM quality_checks")).all())
        health = {r.url.removeprefix(demo_base_url): r for r in conn.execute(text("SELECT * FROM feed_health"))}
        aggregated = conn.execute(text("SELECT count(*) FROM topic_daily_counts")).scalar_one()
    assert ingest.quality_status == "warned" and len(checks) == 6
    assert checks["empty_bodies"].startswith("quality check empty_bodies warned: 0.0175 (1 of 57 processed feed "
                                             "items whose page gave no article text)")
    assert checks["failed_feeds"].startswith("quality check failed_feeds warned: 0.1000 (1 of 10 feed polls")
    assert (health[ERROR_FEED].health, health[ERROR_FEED].last_error) == ("failing", "HTTP 500")
    events = _asset_events()[events_before:]
    assert events == [{"ingest_run_id": ingest.run_id, "since": WEEK["since"], "until": WEEK["until"],
                       "loaded": 52}]
    assert aggregated == 0  # materialised: stale until the downstream DAG refreshes it

    downstream = _dag("news_aggregates", "news_aggregates.py")
    assert [(a.name, a.uri) for a in downstream.timetable.asset_condition.objects] == [("news_articles", ASSET_URI)]
    refreshed = downstream.test(logical_date=datetime(2026, 11, 9, 3, tzinfo=UTC), conn_file_path=str(airflow_env))
    assert refreshed.state == DagRunState.SUCCESS
    with engine.connect() as conn:
        counts = conn.execute(text("SELECT day, topic_id, articles FROM topic_daily_counts ORDER BY 1, 2")).all()
        direct = conn.execute(text(
            "SELECT (a.published_at AT TIME ZONE 'UTC')::date, at.topic_id, count(*) FROM article_topics at "
            "JOIN articles a ON a.id = at.article_id GROUP BY 1, 2 ORDER BY 1, 2")).all()
    assert counts and [tuple(r) for r in counts] == [tuple(r) for r in direct]


def test_a_breached_fail_threshold_fails_the_run_alerts_and_publishes_nothing(
    airflow_db, airflow_env: Path, engine: Engine, demo_base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.utils.state import DagRunState

    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), demo_base_url, include_broken=True)
    events_before = len(_asset_events())
    with webhook_receiver() as (url, posted):
        monkeypatch.setenv("NEWS_ALERT_WEBHOOK", url)
        monkeypatch.setenv("NEWS_QC_EMPTY_BODIES_FAIL", "0.01")
        run = _dag("news_ingest", "news_ingest.py").test(
            logical_date=datetime(2026, 11, 9, 4, tzinfo=UTC), run_conf=WEEK, conn_file_path=str(airflow_env))
    assert run.state == DagRunState.FAILED
    states = _states(run)
    assert states["check_empty_bodies"] == "failed" and states["publish"] == "upstream_failed"
    assert states["check_failed_feeds"] == states["check_topic_coverage"] == "success"
    message = ("quality check empty_bodies failed: 0.0175 (1 of 57 processed feed items whose page gave no article "
               "text) is above the fail threshold 0.01 (NEWS_QC_EMPTY_BODIES_FAIL)")
    assert [(alert["task_id"], alert["error"]) for alert in posted] == [("check_empty_bodies", message)]
    assert posted[0]["subject"] == "news_ingest.check_empty_bodies failed"
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status, quality_status FROM ingest_runs")).one()
    assert tuple(status) == ("success", "failed")  # the load itself succeeded; its data did not pass
    assert _asset_events()[events_before:] == []


def test_the_downstream_dag_follows_the_house_rules_and_waits_for_the_asset(airflow_db) -> None:
    ingest, downstream = _dag("news_ingest", "news_ingest.py"), _dag("news_aggregates", "news_aggregates.py")
    outlets = ingest.get_task("publish").outlets
    assert [(a.name, a.uri) for a in outlets] == [("news_articles", ASSET_URI)]
    assert list(downstream.timetable.asset_condition.objects) == outlets  # the same Asset, by name and uri
    assert downstream.start_date.utcoffset().total_seconds() == 0 and downstream.catchup is False
    assert downstream.tags and downstream.doc_md and "news_aggregates" in downstream.doc_md
    assert downstream.max_active_runs == 1
    assert all(task.retries >= 1 and task.retry_exponential_backoff for task in downstream.tasks)
    # every ingestion task alerts when it fails for good; a quality breach is not retried but fails at once
    assert all(task.on_failure_callback for task in ingest.tasks)
    assert all(ingest.get_task(f"check_{name}").upstream_task_ids == {"start", "finish"} for name in (
        "empty_bodies", "missing_dates", "future_dates", "duplicate_ratio", "failed_feeds", "topic_coverage"))
    assert ingest.get_task("publish").upstream_task_ids >= {"finish", "check_empty_bodies", "check_failed_feeds"}

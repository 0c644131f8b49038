"""
### news_aggregates

An example downstream DAG: it is scheduled on the Asset `news_articles` (uri `news-ingest://news_db/articles`)
that news_ingest's **publish** task updates whenever a run inserted or changed articles and every quality gate
held, so it runs after each such ingestion run, and never on a schedule of its own.

* **refresh** recomputes the materialised analyst aggregates (`topic_daily_counts`) with
  `REFRESH MATERIALIZED VIEW CONCURRENTLY`, so analysts reading them are not blocked.

Copy it for your own consumers: `schedule=[ARTICLES]`, and read `triggering_asset_events` for the run id,
interval and number of articles that the ingestion run changed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, dag, task

from pipeline.settings import Settings

SETTINGS = Settings.from_env()
# the same Asset news_ingest declares as its outlet (assets are matched by name and uri)
ARTICLES = Asset(name="news_articles", uri="news-ingest://news_db/articles", group="news")

DEFAULT_ARGS = {
    "owner": "news-ingest",
    "retries": SETTINGS.task_retries,
    "retry_delay": SETTINGS.retry_delay,
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(minutes=15),
}


def _engine() -> Any:
    """The news database, resolved inside the task (the `news_db` connection when defined)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from pipeline import db

    try:
        airflow_url = Connection.get("news_db").get_uri()
    except AirflowNotFoundException:
        airflow_url = None
    return db.connect(Settings.from_env(), airflow_url)


@dag(
    dag_id="news_aggregates",
    schedule=[ARTICLES],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # a refresh covers every change before it: runs queued behind it add nothing
    default_args=DEFAULT_ARGS,
    tags=["news", "analyst"],
    doc_md=__doc__,
)
def news_aggregates() -> None:
    @task
    def refresh(triggering_asset_events: Any = None) -> dict[str, Any]:
        from pipeline import report

        runs = [event.extra.get("ingest_run_id") for events in (triggering_asset_events or {}).values()
                for event in events]
        with _engine().begin() as conn:
            refreshed = report.refresh_aggregates(conn)
        return {"refreshed": refreshed, "after_ingest_runs": runs}

    refresh()


news_aggregates()

"""
### news_maintenance

Daily housekeeping of the news database.

* **prune_archive** drops the raw bytes of pages and feed documents fetched more than
  `NEWS_ARCHIVE_RETENTION_DAYS` days before the end of the run's data interval (0: keep for ever), keeping
  their fetch facts (URL, final URL, status, headers, time), then deletes the archived documents nothing refers
  to any more. Replay cannot re-process what was pruned. The cut-off comes from the data interval, not the
  clock, so re-running a past day prunes what that day would have pruned and nothing more recent.

The same is `python -m pipeline archive prune [--days N]` from the command line.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from pipeline.settings import Settings

SETTINGS = Settings.from_env()

DEFAULT_ARGS = {
    "owner": "news-ingest",
    "retries": SETTINGS.task_retries,
    "retry_delay": SETTINGS.retry_delay,
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(hours=1),
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
    dag_id="news_maintenance",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["news", "maintenance"],
    doc_md=__doc__,
)
def news_maintenance() -> None:
    @task
    def prune_archive(data_interval_end: datetime | None = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline import archive

        days = Settings.from_env().archive_retention_days
        if not days:
            raise AirflowSkipException("NEWS_ARCHIVE_RETENTION_DAYS is 0: the archive is kept for ever")
        if data_interval_end is None:
            raise ValueError("prune_archive needs the run's data interval")
        cutoff = data_interval_end - timedelta(days=days)
        outcome = archive.prune(_engine(), cutoff)
        return {"cutoff": cutoff.isoformat(), "pages": outcome.pages, "feed_documents": outcome.feed_documents,
                "blobs": outcome.blobs, "bytes": outcome.bytes}

    prune_archive()


news_maintenance()

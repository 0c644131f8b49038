"""
### news_ingest

Polls every enabled feed, fetches the pages of items published in the run's data interval, extracts each
article with trafilatura, deduplicates (canonical URL, exact body), tags topics and upserts PostgreSQL.

* **plan** opens the `ingest_runs` row and splits the enabled feeds into batches (ids only).
* **fetch** (one mapped task per feed batch) polls the feeds, records each poll in `feed_fetches`, queues
  new items in `feed_entries` and stores the fetched pages in `pages`.
* **process** (one mapped task per feed batch) extracts, dedupes, tags and loads those pages.
* **finish** sums the per-batch counts into `ingest_runs`; it fails the run if any batch failed.

Bodies stay in Postgres; XCom carries ids and counts. Every write is an upsert on a natural key, so
re-running a run, or `airflow backfill create` over past dates, never duplicates rows.

Params `since` / `until` (ISO date-times) override the data interval, e.g. for a one-off catch-up.
The news database is the Airflow connection `news_db` when defined, else `NEWS_DATABASE_URL`, else the
embedded PostgreSQL under `.data/`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from pipeline.settings import Settings

SETTINGS = Settings.from_env()

DEFAULT_ARGS = {
    "owner": "news-ingest",
    "retries": 3,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(minutes=45),
}


def _engine() -> Any:
    """The news database engine, migrated; resolved inside tasks, never at parse time."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from pipeline import db

    try:
        airflow_url = Connection.get("news_db").get_uri()
    except AirflowNotFoundException:
        airflow_url = None
    return db.connect(Settings.from_env(), airflow_url)


@dag(
    dag_id="news_ingest",
    schedule=SETTINGS.schedule,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=SETTINGS.max_active_runs,
    default_args=DEFAULT_ARGS,
    tags=["news", "ingest"],
    doc_md=__doc__,
    params={
        "since": Param(None, type=["null", "string"], description="ISO start overriding the data interval"),
        "until": Param(None, type=["null", "string"], description="ISO end overriding the data interval"),
    },
)
def news_ingest() -> None:
    @task(multiple_outputs=True)
    def plan(data_interval_start: datetime | None = None, data_interval_end: datetime | None = None,
             dag_run: Any = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pipeline import flow

        settings = Settings.from_env()
        params = params or {}
        since, until = flow.resolve_interval(data_interval_start, data_interval_end, since=params.get("since"),
                                             until=params.get("until"))
        run = flow.begin_run(_engine(), settings, f"{dag_run.dag_id}/{dag_run.run_id}", "airflow", since, until)
        return {"run_id": run.run_id, "since": since.isoformat(), "until": until.isoformat(),
                "batches": run.batches}

    @task(max_active_tis_per_dagrun=4)
    def fetch(feed_ids: list[int], run_id: int, since: str, until: str) -> dict[str, float]:
        from pipeline import flow

        return flow.fetch_feeds(_engine(), Settings.from_env(), run_id, feed_ids, datetime.fromisoformat(since),
                                datetime.fromisoformat(until))

    @task
    def process(feed_ids: list[int], run_id: int) -> dict[str, float]:
        from pipeline import flow

        return flow.process_feeds(_engine(), Settings.from_env(), run_id, feed_ids)

    @task(trigger_rule="all_done", retries=0)
    def finish(run_id: int, batches: list[list[int]], fetched: list[dict[str, float]],
               processed: list[dict[str, float]]) -> dict[str, float]:
        from pipeline import flow

        fetched, processed = list(fetched), list(processed)
        missing = (len(batches) - len(fetched)) + (len(batches) - len(processed))
        error = f"{missing} of {2 * len(batches)} batch tasks failed; see their logs" if missing else None
        totals = flow.end_run(_engine(), run_id, fetched + processed, error=error)
        if error:
            raise RuntimeError(error)
        return totals

    planned = plan()
    fetched = fetch.partial(run_id=planned["run_id"], since=planned["since"], until=planned["until"]).expand(
        feed_ids=planned["batches"])
    processed = process.partial(run_id=planned["run_id"]).expand(feed_ids=planned["batches"])
    fetched >> processed
    finish(planned["run_id"], planned["batches"], fetched, processed)


news_ingest()

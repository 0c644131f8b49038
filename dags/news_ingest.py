"""
### news_ingest

Polls every enabled feed, fetches the pages of items published in the run's data interval, extracts each
article with trafilatura, deduplicates (canonical URL, exact body, near-duplicate story clusters), tags
topics and upserts PostgreSQL.

* **start** opens the run's `ingest_runs` row for its data interval.
* **plan** splits the enabled feeds into batches (ids only).
* **fetch** (one mapped task per feed batch) polls the feeds, records each poll in `feed_fetches`, queues
  new items in `feed_entries` and stores the fetched pages in `pages`.
* **process** (one mapped task per feed batch) extracts, dedupes, tags and loads those pages. These four
  stages share a task on purpose: they transform the same pages in memory, and splitting them would only
  send every extracted article through the database and back.
* **finish** sums the per-batch counts into `ingest_runs`; it fails the run if any batch failed.
* **check_<name>** (one task per data-quality gate: empty bodies, missing dates, future dates, duplicate ratio,
  failed feeds, topic coverage) measures what the run did, records it in `quality_checks`, logs a warning past
  `NEWS_QC_<NAME>_WARN` and fails past `NEWS_QC_<NAME>_FAIL`, naming the check, the value and the threshold.
* **publish** updates the Asset `news_articles` (uri `news-ingest://news_db/articles`) when the run inserted or
  changed articles and every gate held, so DAGs scheduled on it (e.g. `news_aggregates`) run after it.

A failed task is logged as an alert, and POSTed to `NEWS_ALERT_WEBHOOK` and mailed to `NEWS_ALERT_EMAIL` when
they are set.

Bodies stay in Postgres; XCom carries ids and counts. Every write is an upsert on a natural key, so
re-running a run, or `airflow backfill create` over past dates, never duplicates rows.

Param `mode` chooses what a run does for its interval: `live` (the default: poll feeds and sitemaps, fetch
new pages, process them), `replay` (no network at all: extract, dedupe, tag and load the archived pages of the
interval's items again with the current code and taxonomy; fetch does nothing) or `both` (live, then every
archived page of the interval). Backfill with it, e.g.
`airflow backfill create --dag-id news_ingest --from-date 2026-11-01 --to-date 2026-11-08
--dag-run-conf '{"mode": "replay"}' --reprocess-behavior completed`.
Params `since` / `until` (ISO date-times) override the data interval, e.g. for a one-off catch-up.
The news database is the Airflow connection `news_db` when defined, else `NEWS_DATABASE_URL`, else the
embedded PostgreSQL under `.data/`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task

from pipeline.quality import CHECK_NAMES
from pipeline.settings import Settings

SETTINGS = Settings.from_env()
# the articles table, as downstream DAGs see it: updated by `publish` after a run changed articles
ARTICLES = Asset(name="news_articles", uri="news-ingest://news_db/articles", group="news")


def _alert_on_failure(context: dict[str, Any]) -> None:
    """A failed task (after its retries): log it, and POST / mail it when NEWS_ALERT_* is set."""
    from pipeline import alerts

    ti = context["ti"]
    alerts.notify_failure(Settings.from_env(), f"{ti.dag_id}.{ti.task_id} failed", {
        "dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "map_index": ti.map_index,
        "try_number": ti.try_number, "error": str(context.get("exception") or "unknown")})


DEFAULT_ARGS = {
    "owner": "news-ingest",
    "retries": SETTINGS.task_retries,
    "retry_delay": SETTINGS.retry_delay,
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(minutes=45),
    "on_failure_callback": _alert_on_failure,
}


def _engine(*, migrate: bool = False) -> Any:
    """The news database engine, resolved inside tasks, never at parse time; `start` brings the schema up to
    date once per run, so the other tasks only connect."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from pipeline import db

    try:
        airflow_url = Connection.get("news_db").get_uri()
    except AirflowNotFoundException:
        airflow_url = None
    return db.connect(Settings.from_env(), airflow_url, run_migrations=migrate)


@dag(
    dag_id="news_ingest",
    # a data-interval timetable: each run covers [previous tick, this tick), which the fetch stage filters on
    schedule=CronDataIntervalTimetable(SETTINGS.schedule, timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=SETTINGS.max_active_runs,
    default_args=DEFAULT_ARGS,
    tags=["news", "ingest"],
    doc_md=__doc__,
    params={
        "since": Param(None, type=["null", "string"], description="ISO start overriding the data interval"),
        "until": Param(None, type=["null", "string"], description="ISO end overriding the data interval"),
        "mode": Param("live", type="string", enum=["live", "replay", "both"],
                      description="live: poll and fetch; replay: re-process archived pages, no network; both"),
    },
)
def news_ingest() -> None:
    @task
    def start(data_interval_start: datetime | None = None, data_interval_end: datetime | None = None,
              dag_run: Any = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pipeline import flow

        params = params or {}
        since, until = flow.resolve_interval(data_interval_start, data_interval_end, since=params.get("since"),
                                             until=params.get("until"))
        mode = flow.check_mode(params.get("mode") or "live")
        run_type = getattr(dag_run.run_type, "value", dag_run.run_type)
        run_id = flow.open_run(_engine(migrate=True), f"{dag_run.dag_id}/{dag_run.run_id}", "airflow", since, until,
                               mode=mode, run_type=str(run_type), settings=Settings.from_env())
        return {"ingest_run_id": run_id, "since": since.isoformat(), "until": until.isoformat(), "mode": mode}

    @task
    def plan(run: dict[str, Any]) -> list[list[int]]:
        from pipeline import flow

        return flow.feed_batches(_engine(), Settings.from_env(), run.get("mode", "live"),
                                 datetime.fromisoformat(run["since"]), datetime.fromisoformat(run["until"]))

    @task(max_active_tis_per_dagrun=4)
    def fetch(feed_ids: list[int], run: dict[str, Any]) -> dict[str, float]:
        from pipeline import flow

        if run.get("mode") == "replay":  # no network at all: the batch's pages come from the archive
            return {}
        return flow.fetch_feeds(_engine(), Settings.from_env(), run["ingest_run_id"], feed_ids,
                                datetime.fromisoformat(run["since"]), datetime.fromisoformat(run["until"]))

    # all_done: one batch whose fetch failed for good must not hold back the pages the other batches fetched
    @task(trigger_rule="all_done")
    def process(feed_ids: list[int], run: dict[str, Any]) -> dict[str, float]:
        from pipeline import flow

        return flow.process_feeds(_engine(), Settings.from_env(), run["ingest_run_id"], feed_ids,
                                  mode=run.get("mode", "live"), since=datetime.fromisoformat(run["since"]),
                                  until=datetime.fromisoformat(run["until"]))

    @task(trigger_rule="all_done")
    def finish(run: dict[str, Any], batches: list[list[int]], fetched: list[dict[str, float]],
               processed: list[dict[str, float]]) -> dict[str, float]:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline import flow

        fetched, processed = list(fetched), list(processed)
        missing = (len(batches) - len(fetched)) + (len(batches) - len(processed))
        error = f"{missing} of {2 * len(batches)} batch tasks failed; see their logs" if missing else None
        totals = flow.end_run(_engine(), run["ingest_run_id"], fetched + processed, error=error)
        if error:
            # the failed batches will not run again: no retry; an outage while recording the run does retry
            raise AirflowFailException(error)
        return totals

    @task
    def check(name: str, run: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline import quality

        with _engine().begin() as conn:  # the result is committed before a breach fails the task
            result = quality.run_check(conn, Settings.from_env(), run["ingest_run_id"], name)
        if result.outcome == "failed":
            raise AirflowFailException(result.message)  # a breach is data, not an outage: no retry
        return {"check": name, "outcome": result.outcome, "value": result.value, "message": result.message}

    @task(outlets=[ARTICLES])
    def publish(run: dict[str, Any], totals: dict[str, float], outlet_events: Any = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if not totals.get("loaded"):
            raise AirflowSkipException("no article inserted or changed: downstream DAGs need not run")
        extra = {"ingest_run_id": run["ingest_run_id"], "since": run["since"], "until": run["until"],
                 "loaded": int(totals["loaded"])}
        outlet_events[ARTICLES].extra = extra
        return extra

    run = start()
    batches = plan(run)
    fetched = fetch.partial(run=run).expand(feed_ids=batches)
    processed = process.partial(run=run).expand(feed_ids=batches)
    fetched >> processed
    totals = finish(run, batches, fetched, processed)
    checks = [check.override(task_id=f"check_{name}")(name, run) for name in CHECK_NAMES]
    totals >> checks >> publish(run, totals)


news_ingest()

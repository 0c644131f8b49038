"""
### news_retag

Tags the stored articles of the run's data interval again with the current taxonomy (`NEWS_TAXONOMY`, else
the reviewed `pipeline/taxonomy.yaml`) and replaces their topic rows. Nothing is fetched: titles and bodies
come from the `articles` table.

* **start** syncs the `topics` table (labels, rules, rule versions) and `taxonomy_versions`, opens the run's
  `retag_runs` row and splits the interval's articles into id ranges (ids only, at most 32).
* **retag** (one mapped task per id range) re-tags its articles, one transaction per chunk of 500. Rows whose
  score, evidence and rule version do not change are not touched, so re-running a run changes nothing.
* **finish** sums the counts into `retag_runs`; it fails the run if any range failed.

Articles are chosen by publication time, else first sighting. After a taxonomy change, re-tag history with
`airflow backfill create --dag-id news_retag --from-date 2026-01-01 --to-date 2026-11-28` (one run per day),
or in one run with params: `airflow dags trigger news_retag --conf '{"all_articles": true}'`.
The DAG starts paused; its daily schedule, once unpaused, re-tags the previous day, which catches articles
loaded by a worker that still had an older taxonomy.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from pipeline.settings import Settings

SETTINGS = Settings.from_env()

DEFAULT_ARGS = {
    "owner": "news-ingest",
    "retries": SETTINGS.task_retries,
    "retry_delay": SETTINGS.retry_delay,
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=15),
    "execution_timeout": timedelta(hours=2),
}


def _engine(*, migrate: bool = False) -> Any:
    """The news database, resolved inside tasks (the `news_db` connection when defined), never at parse time."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from pipeline import db

    try:
        airflow_url = Connection.get("news_db").get_uri()
    except AirflowNotFoundException:
        airflow_url = None
    return db.connect(Settings.from_env(), airflow_url, run_migrations=migrate)


@dag(
    dag_id="news_retag",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=SETTINGS.max_active_runs,
    default_args=DEFAULT_ARGS,
    tags=["news", "topics"],
    doc_md=__doc__,
    params={
        "since": Param(None, type=["null", "string"], description="ISO start overriding the data interval"),
        "until": Param(None, type=["null", "string"], description="ISO end overriding the data interval"),
        "all_articles": Param(False, type="boolean", description="re-tag every stored article"),
        "chunk_size": Param(500, type="integer", minimum=1, description="articles per transaction"),
    },
)
def news_retag() -> None:
    @task
    def start(data_interval_start: datetime | None = None, data_interval_end: datetime | None = None,
              dag_run: Any = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pipeline import flow, retag
        from pipeline.load import sync_topics
        from pipeline.topics import load_taxonomy

        params = params or {}
        since: datetime | None
        until: datetime | None
        if params.get("all_articles"):
            since = until = None
        else:
            since, until = flow.resolve_interval(data_interval_start, data_interval_end,
                                                 since=params.get("since"), until=params.get("until"))
        taxonomy = load_taxonomy(Settings.from_env().taxonomy_path)
        with _engine(migrate=True).begin() as conn:
            sync_topics(conn, taxonomy)
            run_id = retag.open_retag_run(conn, f"{dag_run.dag_id}/{dag_run.run_id}", "airflow", taxonomy,
                                          since, until)
            batches = retag.plan_batches(conn, since, until)
        return {"retag_run_id": run_id, "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None, "taxonomy_version": taxonomy.version,
                "batches": batches}

    @task
    def plan(run: dict[str, Any]) -> list[list[int]]:
        return run["batches"]

    @task(max_active_tis_per_dagrun=4)
    def retag(id_range: list[int], run: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, int]:
        from pipeline import retag as stage
        from pipeline.topics import load_taxonomy

        taxonomy = load_taxonomy(Settings.from_env().taxonomy_path)
        if taxonomy.version != run["taxonomy_version"]:  # the file changed since start: do not mix versions
            raise RuntimeError(f"taxonomy changed during the run ({run['taxonomy_version']} -> "
                               f"{taxonomy.version}); trigger the run again")
        since = datetime.fromisoformat(run["since"]) if run["since"] else None
        until = datetime.fromisoformat(run["until"]) if run["until"] else None
        counts = stage.retag_articles(_engine(), taxonomy, since=since, until=until, first_id=id_range[0],
                                      last_id=id_range[1], chunk_size=int((params or {}).get("chunk_size") or 500))
        return counts.as_dict()

    @task(trigger_rule="all_done", retries=0)
    def finish(run: dict[str, Any], batches: list[list[int]], done: list[dict[str, int]]) -> dict[str, int]:
        from pipeline import retag as stage

        done = list(done)
        totals = stage.RetagCounts()
        for part in done:
            totals.add(stage.RetagCounts(**part))
        missing = len(batches) - len(done)
        error = f"{missing} of {len(batches)} retag tasks failed; see their logs" if missing else None
        with _engine().begin() as conn:
            stage.finish_retag_run(conn, run["retag_run_id"], totals, error)
        if error:
            raise RuntimeError(error)
        return totals.as_dict()

    run = start()
    batches = plan(run)
    done = retag.partial(run=run).expand(id_range=batches)
    finish(run, batches, done)


news_retag()

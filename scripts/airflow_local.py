"""`make airflow`: the full local Airflow (standalone: API server + UI, scheduler, dag-processor,
triggerer) with its metadata in the embedded PostgreSQL, next to the news database."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from pipeline import db, store  # noqa: E402
from pipeline.feeds import parse_opml  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

STARTER_FEEDS = ROOT / "config" / "feeds.opml"
PORT = os.environ.get("AIRFLOW_PORT", "8080")


def main() -> int:
    settings = Settings.from_env()
    engine = db.connect(settings)
    with engine.begin() as conn:
        registered = conn.execute(text("SELECT count(*) FROM feeds")).scalar_one()
        if registered == 0:
            for item in parse_opml(STARTER_FEEDS.read_bytes()):
                source_id = store.upsert_source(conn, item.source or item.url, item.homepage)
                store.upsert_feed(conn, item.url, source_id, item.title)
            print(f"registered the starter feeds of {STARTER_FEEDS.relative_to(ROOT)}")
    airflow_url = db.embedded_url(settings.data_dir, "airflow") if not os.environ.get(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") else os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    home = settings.data_dir / "airflow-standalone"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__API__PORT": PORT,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{PORT}/execution/",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        # standalone starts its components as `airflow ...` subprocesses: they must find this venv's airflow
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    print(f"Airflow UI:      http://127.0.0.1:{PORT}  (user admin)")
    print(f"Admin password:  {home / 'simple_auth_manager_passwords.json.generated'} (written on first start)")
    print(f"News database:   {db.describe_url(db.resolve_url(settings))}  (make psql)")
    print("Unpause news_ingest in the UI (or `airflow dags unpause news_ingest`) to start polling. Ctrl-C stops.")
    sys.stdout.flush()
    airflow = str(Path(sys.executable).with_name("airflow"))
    os.execve(airflow, [airflow, "standalone"], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())

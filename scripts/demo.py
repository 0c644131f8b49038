"""`make demo`: embedded PostgreSQL, the demo news site on loopback, one news_ingest DAG run through
Airflow (`airflow dags test`), then a summary of what landed. Running it again changes no counts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import cli, db, demosite  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

DEMO_PORT = int(os.environ.get("NEWS_DEMO_PORT", "8391"))
# the demo site's articles are dated in this week; the run covers it through the DAG's since/until params
DEMO_SINCE = "2026-11-02T00:00:00+00:00"
DEMO_UNTIL = "2026-11-09T00:00:00+00:00"


def airflow_env(settings: Settings, database_url: str) -> dict[str, str]:
    """Environment for the Airflow CLI: a local home under the data dir, this repo's DAGs, loopback allowed."""
    home = settings.data_dir / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "NEWS_DATABASE_URL": database_url,
        "NEWS_DATA_DIR": str(settings.data_dir),
        "NEWS_ALLOW_PRIVATE_ADDRESSES": "true",
        # the demo site is one loopback host: no delay between its requests, as many at once as page threads
        "NEWS_HOST_DELAY": "0",
        "NEWS_HOST_CONCURRENCY": str(settings.page_concurrency),
        # a demo should fail fast with its reason rather than sit out Airflow's retry delays
        "NEWS_TASK_RETRIES": os.environ.get("NEWS_TASK_RETRIES", "0"),
    }


def run_airflow(args: list[str], env: dict[str, str], log: Path) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ airflow {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([airflow, *args], env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
        raise SystemExit(f"airflow {args[0]} {args[1] if len(args) > 1 else ''} failed "
                         f"(exit {done.returncode}); last lines of {log}:\n" + "\n".join(tail))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=DEMO_PORT, help="loopback port of the demo site "
                        "(fixed, so feed and article URLs stay the same from run to run)")
    parser.add_argument("--no-broken", action="store_true", help="leave out the demo's failure-case feeds")
    args = parser.parse_args(argv)

    settings = Settings.from_env(allow_private_addresses=True)
    # the demo site is one loopback host: no delay between its requests, as many at once as page threads
    settings = settings.with_overrides(host_delay=0.0, host_concurrency=settings.page_concurrency)
    print("1/4 starting PostgreSQL and migrating ...", flush=True)
    engine = db.connect(settings)
    database_url = engine.url.render_as_string(hide_password=False)
    print(f"    news database: {db.describe_url(database_url)}")

    site = demosite.load_site()
    with ExitStack() as stack:
        try:
            base_url = stack.enter_context(demosite.serve(site, port=args.port))
        except OSError as exc:
            raise SystemExit(f"cannot serve the demo site on 127.0.0.1:{args.port}: {exc.strerror}; "
                             "set NEWS_DEMO_PORT (or --port) to a free port") from None
        print(f"2/4 demo site on {base_url} ({len(site.articles)} articles); registering its feeds ...", flush=True)
        with engine.begin() as conn:
            count = demosite.register_feeds(conn, site, base_url, include_broken=not args.no_broken)
        print(f"    {count} feeds registered")

        env = airflow_env(settings, database_url)
        log = settings.data_dir / "demo-airflow.log"
        print(f"3/4 running the news_ingest DAG with `airflow dags test` (log: {log}) ...", flush=True)
        started = time.monotonic()
        run_airflow(["db", "migrate"], env, log)
        conf = json.dumps({"since": DEMO_SINCE, "until": DEMO_UNTIL})
        run_airflow(["dags", "test", "news_ingest", DEMO_UNTIL, "--conf", conf], env, log)
        print(f"    done in {time.monotonic() - started:.0f} s")

    print("4/4 summary\n")
    print(cli.render_summary(engine))
    print("\nQuery it: `make psql`, then e.g.\n"
          "  SELECT title, source, published_at, topics FROM articles_with_topics ORDER BY published_at;\n"
          "  SELECT * FROM ingest_runs ORDER BY id DESC LIMIT 1;\n"
          "Run `make demo` again: the counts stay the same.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

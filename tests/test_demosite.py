"""The demo news site serves what demo/expected.yaml declares, over real HTTP on loopback."""

from __future__ import annotations

import difflib
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message
from urllib.parse import urlsplit

import feedparser
import lxml.html
import pytest
import trafilatura

from pipeline.demosite import (
    TOPIC_LABELS,
    DemoArticle,
    DemoSite,
    load_site,
    main,
    render_page,
    serve,
)

TIMEOUT = 10
TOPIC_DPRK_SANCTIONS, TOPIC_NUCLEAR, TOPIC_THAAD, TOPIC_US_CHINA = TOPIC_LABELS


@pytest.fixture(scope="module")
def site() -> DemoSite:
    return load_site()


@pytest.fixture(scope="module")
def base_url(site: DemoSite) -> Iterator[str]:
    with serve(site) as url:
        yield url


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """GET a URL and return status, headers and body, without raising on 4xx/5xx."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def page_facts(body: bytes) -> dict[str, str]:
    """The metadata a page declares, read with lxml."""
    tree = lxml.html.fromstring(body)

    def meta(prop: str) -> str:
        values = tree.xpath(f'//meta[@property="{prop}"]/@content')
        return values[0] if values else ""

    canonical = tree.xpath('//link[@rel="canonical"]/@href')
    return {
        "lang": tree.get("lang", ""),
        "title": tree.findtext(".//title") or "",
        "canonical": canonical[0] if canonical else "",
        "og_url": meta("og:url"),
        "og_title": meta("og:title"),
        "published": meta("article:published_time"),
        "text": tree.text_content(),
    }


def similarity(a: DemoArticle, b: DemoArticle) -> float:
    return difflib.SequenceMatcher(None, a.body.split(), b.body.split(), autojunk=False).ratio()


def fill(template: str, base_url: str) -> str:
    return template.format(base=base_url, netloc=urlsplit(base_url).netloc)


def good_feed_entries(site: DemoSite, base_url: str) -> list[tuple[str, dict]]:
    entries = []
    for path in site.feed_paths():
        status, _, body = fetch(base_url + path)
        assert status == 200, path
        entries += [(path, entry) for entry in feedparser.parse(body).entries]
    return entries


def test_site_has_the_required_outlets_articles_and_feed_formats(site: DemoSite) -> None:
    good_outlets = {site.feed(path).outlet for path in site.feed_paths()}
    assert len(good_outlets) >= 5
    assert len(site.articles) >= 44
    assert sum(1 for a in site.articles if a.copy_of is None) >= 44
    formats = Counter(site.feed(path).format for path in site.feed_paths())
    assert formats["rss"] >= 1 and formats["atom"] >= 1
    feeds_per_outlet = Counter(site.feed(path).outlet for path in site.feed_paths())
    assert max(feeds_per_outlet.values()) >= 2
    templates = {site.outlets[slug].template for slug in good_outlets}
    assert len(templates) == len(good_outlets)


def test_articles_follow_the_content_rules(site: DemoSite) -> None:
    window = site.expected["window"]
    start = datetime.fromisoformat(window["start"])
    end = datetime.fromisoformat(window["end"])
    for article in site.articles:
        assert 150 <= article.word_count <= 500, article.key
        assert len(article.paragraphs) >= 3, article.key
        assert article.published_at.tzinfo is UTC, article.key
        assert start <= article.published_at <= end, article.key
        assert set(article.topics) <= set(TOPIC_LABELS), article.key
    assert len({a.path for a in site.articles}) == len(site.articles)
    assert len({a.title for a in site.articles}) == len(site.articles)
    originals = [a for a in site.articles if a.copy_of is None]
    assert len({a.author for a in originals}) == len(originals)
    assert len({a.published_at.date() for a in site.articles}) == 7


def test_topics_cover_the_taxonomy_with_distractors(site: DemoSite) -> None:
    originals = [a for a in site.articles if a.copy_of is None]
    labelled = Counter(topic for a in originals for topic in a.topics)
    assert labelled[TOPIC_DPRK_SANCTIONS] >= 10
    assert sum(1 for a in originals if a.topics == [TOPIC_NUCLEAR]) >= 3
    assert labelled[TOPIC_THAAD] >= 3
    assert labelled[TOPIC_US_CHINA] >= 3
    assert sum(1 for a in originals if not a.topics) >= 10


def test_expected_counts_match_the_data(site: DemoSite) -> None:
    counts = site.expected["counts"]
    assert counts["articles_served"] == len(site.articles)
    assert counts["original_articles"] == sum(1 for a in site.articles if a.copy_of is None)
    assert counts["good_feeds"] == len(site.feed_paths())
    assert counts["outlets"] == len({site.feed(p).outlet for p in site.feed_paths()})
    distinct_bodies = {a.body for a in site.articles}
    assert counts["after_canonical_dedupe"] == len({a.path for a in site.articles})
    assert counts["after_exact_dedupe"] == len(distinct_bodies)
    assert counts["after_near_dedupe"] == sum(1 for a in site.articles if a.copy_of is None)
    entries = [(feed, item) for feed in site.feeds if not feed.broken for item in site.feed_items(feed)]
    assert counts["good_feed_entries"] == len(entries)
    links = {site.feed_link(item, feed, "http://x") for feed, item in entries}
    assert counts["distinct_good_feed_links"] == len(links)
    topic_counts = Counter(t for a in site.articles for t in a.topics)
    topic_counts["none"] = sum(1 for a in site.articles if not a.topics)
    assert dict(topic_counts) == site.expected["topic_counts"]
    for key in site.expected["tempters"]:
        site.article(key)


def test_copy_groups_match_the_copy_fields(site: DemoSite) -> None:
    for kind in ("exact", "near"):
        declared = {tuple(group) for group in site.expected[f"{kind}_groups"]}
        derived: dict[str, list[str]] = {}
        for article in site.articles:
            if article.copy_kind == kind:
                derived.setdefault(article.copy_of or "", []).append(article.key)
        assert {(orig, *sorted(copies)) for orig, copies in derived.items()} == {
            (group[0], *sorted(group[1:])) for group in declared
        }


def test_exact_copies_share_the_body_and_nothing_else(site: DemoSite) -> None:
    for original_key, *copies in site.expected["exact_groups"]:
        original = site.article(original_key)
        for key in copies:
            copy = site.article(key)
            assert copy.paragraphs == original.paragraphs
            assert copy.outlet != original.outlet
            assert site.outlets[copy.outlet].template != site.outlets[original.outlet].template
            assert copy.title != original.title and copy.path != original.path


def test_near_copies_are_close_but_not_identical(site: DemoSite) -> None:
    for original_key, *copies in site.expected["near_groups"]:
        original = site.article(original_key)
        assert original.outlet == "meridian"
        for key in copies:
            copy = site.article(key)
            assert copy.body != original.body and copy.title != original.title
            assert similarity(original, copy) > 0.85, key


def test_articles_sharing_a_quote_are_otherwise_different(site: DemoSite) -> None:
    for pair in site.expected["shared_quote_pairs"]:
        first, second = (site.article(key) for key in pair["articles"])
        quote = " ".join(pair["quote"].split())
        assert quote in first.body and quote in second.body
        assert first.copy_of is None and second.copy_of is None
        assert similarity(first, second) < 0.4


def test_every_good_feed_parses_and_matches_its_articles(site: DemoSite, base_url: str) -> None:
    for path in site.feed_paths():
        feed = site.feed(path)
        status, headers, body = fetch(base_url + path)
        assert status == 200
        assert headers.get_content_type() == f"application/{feed.format}+xml"
        parsed = feedparser.parse(body)
        assert not parsed.bozo, (path, parsed.get("bozo_exception"))
        assert parsed.version.startswith(feed.format)
        items = site.feed_items(feed)
        assert len(parsed.entries) == len(items) > 0
        assert len({entry.id for entry in parsed.entries}) == len(items)
        for entry, item in zip(parsed.entries, items, strict=True):
            assert entry.title == item.title
            assert item.author in entry.author
            assert entry.summary
            published = datetime.fromisoformat(entry.published) if feed.format == "atom" else None
            stamp = datetime(*entry.published_parsed[:6], tzinfo=UTC)
            assert stamp == item.published_at, entry.link
            if published is not None:
                assert published == item.published_at
            assert entry.link == site.feed_link(item, feed, base_url)
            if feed.format == "atom":
                assert entry.link == next(link.href for link in entry.links if link.rel == "alternate")


def test_every_feed_link_resolves_to_its_article(site: DemoSite, base_url: str) -> None:
    entries = good_feed_entries(site, base_url)
    assert len(entries) == site.expected["counts"]["good_feed_entries"]
    canonicals = set()
    for _, entry in entries:
        status, _, body = fetch(entry.link)
        assert status == 200, entry.link
        facts = page_facts(body)
        assert facts["canonical"] == facts["og_url"]
        assert facts["canonical"].startswith(base_url + "/")
        canonicals.add(facts["canonical"])
    assert len(canonicals) == site.expected["counts"]["after_canonical_dedupe"]
    assert any(entry.link.startswith("HTTP://") for _, entry in entries)


def test_every_article_page_declares_its_metadata(site: DemoSite, base_url: str) -> None:
    for article in site.articles:
        status, headers, body = fetch(article.canonical_url(base_url))
        assert status == 200 and headers.get_content_type() == "text/html"
        facts = page_facts(body)
        assert facts["lang"] == "en"
        assert article.title in facts["title"] and facts["og_title"] == article.title
        assert facts["canonical"] == facts["og_url"] == article.canonical_url(base_url)
        published = datetime.fromisoformat(facts["published"])
        assert published.tzinfo is not None and published == article.published_at
        assert f"By {article.author}" in facts["text"]
        for paragraph in article.paragraphs:
            assert paragraph in facts["text"], article.key


def test_url_variants_declare_the_same_canonical(site: DemoSite, base_url: str) -> None:
    groups = site.expected["url_variant_groups"]
    assert len(groups) >= 3
    for group in groups:
        article = site.article(group["key"])
        canonical = fill(group["canonical"], base_url)
        assert canonical == article.canonical_url(base_url)
        links = [fill(link, base_url) for link in group["feed_links"]]
        assert sorted(links) == sorted(site.article_urls(group["key"], base_url)[1:])
        for link in [*links, canonical + "?utm_source=newsletter"]:
            status, _, body = fetch(link)
            assert status == 200, link
            facts = page_facts(body)
            assert facts["canonical"] == facts["og_url"] == canonical, link
    feeds_per_article = Counter(
        item.key for feed in site.feeds if not feed.broken for item in site.feed_items(feed)
    )
    assert sum(1 for count in feeds_per_article.values() if count > 1) >= 2


def test_feed_that_fails_returns_500(site: DemoSite, base_url: str) -> None:
    for failure in site.expected["failures"]["feeds"]:
        assert failure["path"] in site.feed_paths(include_broken=True)
        assert failure["path"] not in site.feed_paths()
        status, _, _ = fetch(base_url + failure["path"])
        assert status == failure["status"]


def test_truncated_feed_is_malformed_but_partly_recoverable(site: DemoSite, base_url: str) -> None:
    failure = next(f for f in site.expected["failures"]["feeds"] if f.get("bozo"))
    status, _, body = fetch(base_url + failure["path"])
    assert status == 200
    parsed = feedparser.parse(body)
    assert parsed.bozo
    assert len(parsed.entries) == failure["entries"]
    links = [entry.link for entry in parsed.entries if entry.get("link")]
    assert len(links) == failure["entries_with_link"]
    expected = [site.article(key).canonical_url(base_url) for key in failure["linked_articles"]]
    assert links == expected
    for link in links:
        assert fetch(link)[0] == 200


def test_broken_entries_fail_as_declared(site: DemoSite, base_url: str) -> None:
    for failure in site.expected["failures"]["entries"]:
        status, _, body = fetch(base_url + failure["feed"])
        links = {entry.link for entry in feedparser.parse(body).entries}
        url = base_url + failure["path"]
        assert url in links
        status, _, body = fetch(url)
        assert status == failure["status"]
        if status == 200:
            facts = page_facts(body)
            assert facts["canonical"] == url
            extracted = trafilatura.extract(body.decode(), include_comments=False) or ""
            assert len(extracted.split()) < failure["max_extracted_words"]


def test_unknown_path_gets_a_404_page(base_url: str) -> None:
    status, headers, body = fetch(base_url + "/meridian/world/2026/11/03/no-such-story")
    assert status == 404
    assert headers.get_content_type() == "text/html" and b"not found" in body


def test_conditional_get_with_etag_returns_304(site: DemoSite, base_url: str) -> None:
    url = base_url + site.feed_paths()[0]
    status, headers, _ = fetch(url)
    assert status == 200 and headers["ETag"]
    status, _, body = fetch(url, {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""


def test_render_page_puts_any_text_into_every_template(site: DemoSite) -> None:
    paragraphs = [
        "First paragraph of a story from elsewhere, with <angle brackets> & an ampersand.",
        'Second paragraph: "quoted words" and more text.',
        "Third paragraph closes the story.",
    ]
    when = datetime(2026, 11, 4, 9, 30, tzinfo=UTC)
    good_outlets = {site.feed(path).outlet for path in site.feed_paths()}
    for slug in site.outlets:
        page = render_page(
            slug,
            title="A borrowed story",
            author="Test Author",
            published_at=when,
            paragraphs=paragraphs,
            canonical_url="http://127.0.0.1:1/borrowed/story",
            section="China",
        )
        facts = page_facts(page.encode())
        assert facts["canonical"] == facts["og_url"] == "http://127.0.0.1:1/borrowed/story"
        assert datetime.fromisoformat(facts["published"]) == when
        assert "By Test Author" in facts["text"] and facts["lang"] == "en"
        for paragraph in paragraphs:
            assert paragraph in facts["text"]
        boilerplate = facts["text"].replace(" ".join(paragraphs), "")
        assert slug not in good_outlets or "North Korea" in boilerplate or "sanctions" in boilerplate.lower()
    with pytest.raises(ValueError):
        render_page("nope", title="t", author=None, published_at=when, paragraphs=[], canonical_url="x")


def test_cli_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert "--port" in capsys.readouterr().out


def test_trafilatura_recovers_every_body_behind_the_boilerplate(site: DemoSite, base_url: str) -> None:
    for article in site.articles:
        _, _, body = fetch(article.canonical_url(base_url))
        lines = (trafilatura.extract(body.decode(), include_comments=False) or "").splitlines()
        if lines and lines[0] == article.title:
            lines = lines[1:]
        assert lines == article.paragraphs, article.key


def test_home_page_lists_every_feed(site: DemoSite, base_url: str) -> None:
    status, _, body = fetch(base_url + "/")
    assert status == 200
    for path in site.feed_paths(include_broken=True):
        assert (base_url + path).encode() in body

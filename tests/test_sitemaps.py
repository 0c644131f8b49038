"""Sitemaps: parsing documents we wrote (news, index, gzip, text, hostile) and reading them over loopback HTTP."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from pipeline.demosite import load_site
from pipeline.http import HttpClient
from pipeline.settings import Settings
from pipeline.sitemaps import (
    ENTITY_REFUSAL,
    MAX_URLS,
    parse_sitemap,
    parse_w3c_datetime,
    read_sitemaps,
    sitemaps_from_robots,
)
from tests.loopback import Route, respond, serve

XML = "application/xml; charset=utf-8"
SINCE = datetime(2026, 11, 5, tzinfo=UTC)
UNTIL = datetime(2026, 11, 6, tzinfo=UTC)

NEWS_SITEMAP = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"
        xmlns:news="http://www.google.com/schemas/sitemap-news/0.9">
  <url>
    <loc>https://paper.example/world/2026/11/05/harbour-strike</loc>
    <lastmod>2026-11-05T18:00:00Z</lastmod>
    <news:news>
      <news:publication><news:name>The Paper</news:name><news:language>en</news:language></news:publication>
      <news:publication_date>2026-11-05T09:30:00+09:00</news:publication_date>
      <news:title>Harbour workers strike &amp; ports close</news:title>
    </news:news>
  </url>
  <!-- a comment between entries -->
  <url>
    <loc>https://paper.example/business/rates</loc>
    <news:news><news:publication_date>2026-11-04</news:publication_date></news:news>
  </url>
</urlset>
"""

PLAIN_SITEMAP = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>https://paper.example/a</loc><lastmod>2026-11-05</lastmod></url>
  <url><loc> https://paper.example/b </loc><lastmod>not a date</lastmod></url>
  <url><loc>/relative/c</loc><lastmod>2026-11-05</lastmod></url>
  <url><loc>ftp://paper.example/d</loc></url>
  <url><loc>javascript:alert(1)</loc></url>
  <url><lastmod>2026-11-05</lastmod></url>
</urlset>
"""


def urlset(*entries: tuple[str, str | None]) -> bytes:
    """A urlset of (location, lastmod) pairs; a None lastmod is left out."""
    rows = "".join(f"<url><loc>{loc}</loc>" + (f"<lastmod>{mod}</lastmod>" if mod else "") + "</url>"
                   for loc, mod in entries)
    return f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{rows}</urlset>'.encode()


def index(*children: tuple[str, str | None]) -> bytes:
    """A sitemap index of (location, lastmod) pairs."""
    rows = "".join(f"<sitemap><loc>{loc}</loc>" + (f"<lastmod>{mod}</lastmod>" if mod else "") + "</sitemap>"
                   for loc, mod in children)
    return f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{rows}</sitemapindex>'.encode()


def gzip_bomb(inflated_mib: int) -> bytes:
    """A small gzip file of zeros that inflates to `inflated_mib` MiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1024 * 1024)
    return b"".join(packer.compress(chunk) for _ in range(inflated_mib)) + packer.flush()


@pytest.fixture
def client() -> Iterator[HttpClient]:
    """Our client, with address checks on and only 127.0.0.1 allowed besides public addresses."""
    with HttpClient(Settings(allowed_networks="127.0.0.1/32", connect_timeout=5, read_timeout=5,
                             total_timeout=20)) as http:
        yield http


def test_news_sitemap_gives_url_title_and_publication_date_before_lastmod() -> None:
    parsed = parse_sitemap(NEWS_SITEMAP, {"Content-Type": XML}, "https://paper.example/news.xml")
    assert (parsed.kind, parsed.error, parsed.bozo) == ("urlset", None, False)
    assert parsed.sitemaps == []
    first, second = parsed.entries
    assert first.url == "https://paper.example/world/2026/11/05/harbour-strike"
    assert first.title == "Harbour workers strike & ports close"
    assert first.published_at == datetime(2026, 11, 5, 0, 30, tzinfo=UTC)  # news date wins over lastmod
    assert first.guid is None  # keyed by canonical URL, as a feed item without a guid
    assert (second.title, second.published_at) == (None, datetime(2026, 11, 4, tzinfo=UTC))


def test_plain_urlset_dates_entries_by_lastmod_and_drops_relative_and_odd_locations() -> None:
    parsed = parse_sitemap(PLAIN_SITEMAP, {}, "https://paper.example/sitemap.xml")
    assert [(entry.url, entry.published_at) for entry in parsed.entries] == [
        ("https://paper.example/a", datetime(2026, 11, 5, tzinfo=UTC)),
        ("https://paper.example/b", None),
    ]
    assert parsed.error is None
    assert parsed.bozo and parsed.skipped == 4
    assert parsed.bozo_reason == ("4 locations dropped (relative, not http(s), or over 2048 characters); "
                                  "1 dates are not W3C datetimes")


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-05", datetime(2026, 11, 5, tzinfo=UTC)),
    ("2026-11", datetime(2026, 11, 1, tzinfo=UTC)),
    ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2026-11-05T10:30+02:00", datetime(2026, 11, 5, 8, 30, tzinfo=UTC)),
    ("2026-11-05T10:30:15.5Z", datetime(2026, 11, 5, 10, 30, 15, 500000, tzinfo=UTC)),
    (" 2026-11-05t10:30:15z ", datetime(2026, 11, 5, 10, 30, 15, tzinfo=UTC)),
    ("2026-11-05T10:30:15", datetime(2026, 11, 5, 10, 30, 15, tzinfo=UTC)),  # no zone: taken as UTC
    ("2026-13-01", None),
    ("2026-11-05T25:00Z", None),
    ("Thu, 05 Nov 2026 10:00:00 GMT", None),
    ("yesterday", None),
    ("", None),
    (None, None),
])
def test_w3c_datetimes_are_read_in_utc_and_unreadable_ones_are_none(text: str | None,
                                                                       expected: datetime | None) -> None:
    assert parse_w3c_datetime(text) == expected


def test_sitemap_index_lists_children_with_their_lastmod() -> None:
    body = index(("https://paper.example/s/1.xml", "2026-11-05T12:00:00+01:00"),
                 ("https://paper.example/s/2.xml.gz", None), ("/s/relative.xml", "2026-11-05"))
    parsed = parse_sitemap(body, {}, "https://paper.example/sitemap.xml")
    assert parsed.kind == "sitemapindex" and parsed.entries == []
    assert parsed.sitemaps == [("https://paper.example/s/1.xml", datetime(2026, 11, 5, 11, tzinfo=UTC)),
                               ("https://paper.example/s/2.xml.gz", None)]
    assert parsed.skipped == 1


def test_a_urlset_ignores_index_items_and_an_index_ignores_url_items() -> None:
    body = (b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            b"<sitemap><loc>https://paper.example/child.xml</loc></sitemap>"
            b"<url><loc>https://paper.example/a</loc></url></urlset>")
    parsed = parse_sitemap(body, {}, "https://paper.example/sitemap.xml")
    assert [entry.url for entry in parsed.entries] == ["https://paper.example/a"] and parsed.sitemaps == []


def test_gzip_sitemap_is_inflated_and_parsed() -> None:
    parsed = parse_sitemap(gzip.compress(NEWS_SITEMAP), {"Content-Type": "application/x-gzip"},
                           "https://paper.example/news.xml.gz")
    assert parsed.error is None
    assert [entry.url for entry in parsed.entries] == ["https://paper.example/world/2026/11/05/harbour-strike",
                                                       "https://paper.example/business/rates"]


def test_gzip_bomb_is_refused_without_inflating_it_whole() -> None:
    bomb = gzip_bomb(200)
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    try:
        parsed = parse_sitemap(bomb, {}, "https://paper.example/bomb.xml.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.entries == [] and parsed.error is not None
    assert parsed.error.startswith("refused: the gzip file inflates past 52428800 bytes")
    assert peak < 8 * 1024 * 1024  # measured a chunk at a time, never held whole
    small_cap = parse_sitemap(gzip.compress(NEWS_SITEMAP), {}, "https://paper.example/news.xml.gz", max_bytes=100)
    assert small_cap.error == "refused: the gzip file inflates past 100 bytes, the sitemap limit"


def test_uncompressed_sitemap_over_the_cap_is_refused() -> None:
    parsed = parse_sitemap(NEWS_SITEMAP, {}, "https://paper.example/news.xml", max_bytes=100)
    assert parsed.error == "refused: over 100 bytes, the sitemap limit"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-be", "utf-32"])
def test_entity_bomb_is_refused_quickly_before_parsing(encoding: str) -> None:
    laughs = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    bomb = (f'<?xml version="1.0" encoding="{encoding}"?>\n<!DOCTYPE urlset [{"".join(laughs)}]>\n'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            "<url><loc>https://paper.example/&lol9;</loc></url></urlset>").encode(encoding)
    started = time.monotonic()
    parsed = parse_sitemap(bomb, {}, "https://paper.example/bomb.xml")
    assert time.monotonic() - started < 0.5
    assert parsed.error == ENTITY_REFUSAL and parsed.entries == []
    gzipped = parse_sitemap(gzip.compress(bomb), {}, "https://paper.example/bomb.xml.gz")
    assert gzipped.error == ENTITY_REFUSAL


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_wide_encodings_are_read_as_xml(encoding: str) -> None:
    document = urlset(("https://paper.example/a", "2026-11-05")).decode()
    body = f'<?xml version="1.0" encoding="{encoding}"?>{document}'.encode(encoding)
    parsed = parse_sitemap(body, {}, "https://paper.example/sitemap.xml")
    assert parsed.error is None and [entry.url for entry in parsed.entries] == ["https://paper.example/a"]


def test_external_doctype_is_not_loaded() -> None:
    body = (b'<?xml version="1.0"?><!DOCTYPE urlset SYSTEM "file:///etc/passwd">'
            + urlset(("https://paper.example/a", "2026-11-05")))
    parsed = parse_sitemap(body, {}, "https://paper.example/sitemap.xml")
    assert parsed.error is None and [entry.url for entry in parsed.entries] == ["https://paper.example/a"]


@pytest.mark.parametrize(("body", "error_start"), [
    (b"", "empty document"),
    (b"  \n ", "empty document"),
    (b"<<<>>> not xml at all", "not well-formed XML"),
    (b"<urlset><url>", "not a usable sitemap: not well-formed XML"),
    (b"<urlset><url><loc>/only/relative</loc></url></urlset>", "not a usable sitemap: 1 locations dropped"),
    (b"<html><body><p>Page not found</p></body></html>", "not a sitemap: root element <html>"),
    (b'<rss version="2.0"><channel></channel></rss>', "not a sitemap: root element <rss>"),
    (b"just some words\nno addresses here\n", "not a sitemap: no line is an absolute http(s) URL"),
    (b"\x1f\x8b\x08\x00garbage", "not a valid gzip file"),
    (gzip.compress(NEWS_SITEMAP)[:40], "not a valid gzip file: cut short"),
])
def test_malformed_input_is_an_error_not_an_exception(body: bytes, error_start: str) -> None:
    parsed = parse_sitemap(body, {"Content-Type": "text/html"}, "https://paper.example/sitemap.xml")
    assert parsed.entries == [] and parsed.sitemaps == []
    assert parsed.error is not None and parsed.error.startswith(error_start), parsed.error
    assert parsed.bozo


def test_cut_short_urlset_keeps_the_entries_before_the_damage_flagged() -> None:
    body = urlset(("https://paper.example/a", "2026-11-05"), ("https://paper.example/b", "2026-11-05"))
    parsed = parse_sitemap(body[: body.index(b"<url><loc>https://paper.example/b")] + b"<url><lo",
                           {}, "https://paper.example/sitemap.xml")
    assert parsed.error is None and parsed.bozo
    assert (parsed.bozo_reason or "").startswith("not well-formed XML")
    assert [entry.url for entry in parsed.entries] == ["https://paper.example/a"]


def test_urls_past_the_protocol_limit_are_dropped_and_flagged() -> None:
    body = urlset(*((f"https://paper.example/{n}", None) for n in range(MAX_URLS + 3)))
    parsed = parse_sitemap(body, {}, "https://paper.example/sitemap.xml")
    assert len(parsed.entries) == MAX_URLS and parsed.skipped == 3
    assert parsed.bozo and "more than 50000 entries" in (parsed.bozo_reason or "")


def test_plain_text_sitemap_keeps_absolute_http_lines() -> None:
    body = ("\ufeffhttps://paper.example/a\r\n\n  http://paper.example/b?x=1  \n/relative\nmailto:desk@paper.example\n"
            "https://paper.example/caf\u00e9\n").encode()
    parsed = parse_sitemap(body, {"Content-Type": "text/plain"}, "https://paper.example/sitemap.txt")
    assert parsed.kind == "text" and parsed.error is None
    assert [entry.url for entry in parsed.entries] == [
        "https://paper.example/a", "http://paper.example/b?x=1", "https://paper.example/caf\u00e9"]
    assert all(entry.published_at is None for entry in parsed.entries)
    assert parsed.bozo and parsed.skipped == 2


def test_robots_txt_sitemap_lines_are_found_resolved_and_filtered() -> None:
    body = (b"User-agent: *\nDisallow: /private\n# Sitemap: https://paper.example/commented.xml\n"
            b"Sitemap: https://paper.example/sitemap.xml\nsitemap:/news-sitemap.xml  # relative\n"
            b"SITEMAP: ftp://paper.example/odd.xml\nSitemap: https://paper.example/sitemap.xml\n")
    assert sitemaps_from_robots(body, "https://paper.example") == [
        "https://paper.example/sitemap.xml", "https://paper.example/news-sitemap.xml"]
    assert sitemaps_from_robots(body) == ["https://paper.example/sitemap.xml"]
    long_file = b"".join(b"Disallow: /search/%d\n" % n for n in range(2000)) + body
    assert len(long_file) > 10_000
    assert sitemaps_from_robots(long_file, "https://paper.example") == [
        "https://paper.example/sitemap.xml", "https://paper.example/news-sitemap.xml"]


def window_sitemap(base: str) -> bytes:
    """Entries around the interval [SINCE, UNTIL) and one undated."""
    return urlset(
        (f"{base}/at-since", "2026-11-05T00:00:00Z"),
        (f"{base}/before-since", "2026-11-04T23:59:59Z"),
        (f"{base}/just-before-until", "2026-11-05T23:59:59.999999Z"),
        (f"{base}/at-until", "2026-11-06T00:00:00Z"),
        (f"{base}/at-until-elsewhere", "2026-11-06T09:00:00+09:00"),
        (f"{base}/undated", None),
    )


def test_read_sitemaps_follows_an_index_records_a_failed_child_and_skips_one_older_than_the_interval(
        client: HttpClient) -> None:
    routes: dict[str, Route] = {}
    with serve(routes) as server:
        base = server.base_url
        routes.update({
            "/sitemap.xml": respond(200, index(
                (f"{base}/fresh.xml", "2026-11-05T20:00:00Z"),
                (f"{base}/missing.xml", "2026-11-05T20:00:00Z"),
                (f"{base}/old.xml", "2026-11-04T23:59:59Z"),
                (f"{base}/undated.xml.gz", None),
                (f"{base}/fresh.xml", "2026-11-05T20:00:00Z"),  # listed twice, fetched once
            ), XML),
            "/fresh.xml": respond(200, window_sitemap(base), XML),
            "/old.xml": respond(200, urlset((f"{base}/old-story", "2026-11-05T12:00:00Z")), XML),
            "/undated.xml.gz": respond(200, gzip.compress(NEWS_SITEMAP.replace(b"https://paper.example",
                                                                               base.encode())),
                                       "application/x-gzip"),
        })
        result = read_sitemaps(client, f"{base}/sitemap.xml", SINCE, UNTIL)
    assert "/old.xml" not in server.hits
    assert sorted(server.hits) == ["/fresh.xml", "/missing.xml", "/sitemap.xml", "/undated.xml.gz"]
    assert sorted(entry.url for entry in result.entries) == [
        f"{base}/at-since", f"{base}/just-before-until", f"{base}/world/2026/11/05/harbour-strike"]
    assert [(doc.url, doc.status, doc.error) for doc in result.documents] == [
        (f"{base}/sitemap.xml", 200, None), (f"{base}/fresh.xml", 200, None),
        (f"{base}/missing.xml", 404, "HTTP 404"), (f"{base}/undated.xml.gz", 200, None)]
    assert [doc.url for doc in result.failed] == [f"{base}/missing.xml"]
    assert result.not_followed == [(f"{base}/old.xml",
                                    "last modified 2026-11-04T23:59:59+00:00, before the interval")]
    assert [fetch.url for fetch in result.fetches] == [doc.url for doc in result.documents]
    assert result.fetches[1].body == window_sitemap(base)  # raw bytes kept for archiving
    assert result.fetches[3].body.startswith(b"\x1f\x8b")
    assert (result.listed, result.undated) == (8, 1)


def test_read_sitemaps_keeps_undated_entries_only_when_asked(client: HttpClient) -> None:
    routes: dict[str, Route] = {}
    with serve(routes) as server:
        routes["/s.xml"] = respond(200, window_sitemap(server.base_url), XML)
        dropped = read_sitemaps(client, f"{server.base_url}/s.xml", SINCE, UNTIL)
        kept = read_sitemaps(client, f"{server.base_url}/s.xml", SINCE, UNTIL, keep_undated=True)
    assert f"{server.base_url}/undated" not in {entry.url for entry in dropped.entries}
    assert f"{server.base_url}/undated" in {entry.url for entry in kept.entries}


def test_read_sitemaps_stops_at_max_documents_and_says_what_it_left(client: HttpClient) -> None:
    routes: dict[str, Route] = {}
    with serve(routes) as server:
        base = server.base_url
        children = [(f"{base}/s{n}.xml", None) for n in range(4)]
        routes["/sitemap.xml"] = respond(200, index(*children), XML)
        for n in range(4):
            routes[f"/s{n}.xml"] = respond(200, urlset((f"{base}/story-{n}", "2026-11-05T12:00:00Z")), XML)
        result = read_sitemaps(client, f"{base}/sitemap.xml", SINCE, UNTIL, max_documents=3)
    assert len(server.hits) == 3
    assert [entry.url for entry in result.entries] == [f"{base}/story-0", f"{base}/story-1"]
    assert [url for url, _ in result.not_followed] == [f"{base}/s2.xml", f"{base}/s3.xml"]
    assert all(reason == "over the limit of 3 documents" for _, reason in result.not_followed)


def test_read_sitemaps_records_a_malformed_document_and_an_unreachable_start(client: HttpClient) -> None:
    routes: dict[str, Route] = {}
    with serve(routes) as server:
        routes["/bad.xml"] = respond(200, b"<urlset><url>", XML)
        bad = read_sitemaps(client, f"{server.base_url}/bad.xml", SINCE, UNTIL)
    assert bad.entries == [] and bad.documents[0].error is not None
    refused = read_sitemaps(HttpClient(Settings()), f"{server.base_url}/bad.xml", SINCE, UNTIL)
    assert refused.entries == [] and "not public" in (refused.documents[0].error or "")


def test_demo_site_sitemaps_list_exactly_the_demo_articles_with_their_dates(demo_base_url: str,
                                                                            client: HttpClient) -> None:
    site = load_site()
    result = read_sitemaps(client, f"{demo_base_url}/sitemap.xml", datetime(2000, 1, 1, tzinfo=UTC),
                           datetime(2100, 1, 1, tzinfo=UTC))
    assert result.failed == [] and result.not_followed == []
    assert len(result.documents) == 1 + len({article.outlet for article in site.articles})
    found = {entry.url: (entry.published_at, entry.title) for entry in result.entries}
    assert found == {a.canonical_url(demo_base_url): (a.published_at, a.title) for a in site.articles}
    # the links the feeds give first are those canonical URLs, so both sources queue the same pages
    assert set(found) == {site.article_urls(a.key, demo_base_url)[0] for a in site.articles}
    assert len(result.entries) == len(site.articles)


def test_demo_site_interval_keeps_only_the_articles_published_in_it(demo_base_url: str,
                                                                    client: HttpClient) -> None:
    site = load_site()
    since, until = datetime(2026, 11, 6, tzinfo=UTC), datetime(2026, 11, 8, tzinfo=UTC)
    result = read_sitemaps(client, f"{demo_base_url}/sitemap.xml", since, until)
    expected = {a.canonical_url(demo_base_url) for a in site.articles if since <= a.published_at < until}
    assert expected and {entry.url for entry in result.entries} == expected
    older = [url for url, _ in result.not_followed]
    newest = {slug: articles[0].published_at for slug, articles in site.sitemap_articles().items()}
    assert older == [f"{demo_base_url}/sitemaps/{slug}.xml" for slug, when in newest.items() if when < since]

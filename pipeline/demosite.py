"""A small fictional news website with RSS and Atom feeds, served on loopback for the demo and tests."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape as xml_escape
from xml.sax.saxutils import quoteattr

import yaml

LOGGER = logging.getLogger(__name__)

DEMO_ROOT = Path(__file__).resolve().parent.parent / "demo"
TOPIC_LABELS = (
    "DPRK sanctions",
    "DPRK nuclear and missile programme",
    "THAAD deployment",
    "US–China relations",
)
COPY_KINDS = ("exact", "near")
FEED_FORMATS = ("rss", "atom")
FEED_FAILURES = ("http_500", "truncated")
BROKEN_KINDS = ("missing", "video")
NEAR_EDIT_KEYS = frozenset({"replace", "drop", "insert_after", "append"})
HTML_TYPE = "text/html; charset=utf-8"
RSS_TYPE = "application/rss+xml; charset=utf-8"
ATOM_TYPE = "application/atom+xml; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
XML_TYPE = "application/xml; charset=utf-8"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8391
LATEST_COUNT = 5
SUMMARY_WORDS = 35
TAG_AUTHORITY = "demo.news-ingest.invalid"


@dataclass(frozen=True)
class DemoFeed:
    """One feed of an outlet; a broken feed is a failure case and `failure` says how it misbehaves."""

    outlet: str
    feed_id: str
    path: str
    title: str
    format: str
    sections: tuple[str, ...] = ()
    broken: bool = False
    failure: str | None = None
    item_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoOutlet:
    """A fictional publication: its template, time zone, URL scheme and feeds."""

    slug: str
    name: str
    kind: str
    template: str
    tz: timezone
    path_pattern: str
    date_display: str
    rss_author: str
    rss_author_email: str
    rss_guid: str
    paragraph_open: str
    promo_after: int
    promo_html: str
    most_read: tuple[str, ...]
    feeds: tuple[DemoFeed, ...]


@dataclass(frozen=True)
class DemoArticle:
    """One article page of the demo site, with the facts tests assert about it."""

    key: str
    outlet: str
    path: str
    title: str
    author: str
    published_at: datetime
    paragraphs: list[str]
    section: str
    topics: list[str]
    copy_of: str | None = None
    copy_kind: str | None = None
    byline_extra: str = ""
    feed_links: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def canonical_url(self, base_url: str) -> str:
        """The absolute clean URL every variant of this page declares."""
        return base_url.rstrip("/") + self.path

    @property
    def body(self) -> str:
        return "\n\n".join(self.paragraphs)

    @property
    def word_count(self) -> int:
        return len(self.body.split())


@dataclass(frozen=True)
class DemoBrokenEntry:
    """A feed entry of the failure cases: a page that is missing (404) or has no article text (video)."""

    key: str
    outlet: str
    path: str
    title: str
    author: str
    published_at: datetime
    section: str
    kind: str
    summary: str
    caption: str = ""
    reason: str = ""


FeedItem = DemoArticle | DemoBrokenEntry


class DemoSite:
    """The loaded demo data and a renderer for every URL of the site."""

    def __init__(
        self,
        root: Path,
        outlets: dict[str, DemoOutlet],
        articles: list[DemoArticle],
        broken_entries: list[DemoBrokenEntry],
        expected: dict[str, Any],
    ) -> None:
        self.root = root
        self.outlets = outlets
        self.articles = articles
        self.broken_entries = broken_entries
        self.expected = expected
        self.by_key: dict[str, FeedItem] = {item.key: item for item in [*articles, *broken_entries]}
        self.feeds: list[DemoFeed] = [feed for outlet in outlets.values() for feed in outlet.feeds]
        self._feeds_by_path = {feed.path: feed for feed in self.feeds}
        self._routes = self._build_routes()
        self._cache: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self._cache_lock = threading.Lock()

    def feed_paths(self, include_broken: bool = False) -> list[str]:
        """Paths of the good feeds, and of the failure-case feeds too when asked."""
        return [feed.path for feed in self.feeds if include_broken or not feed.broken]

    def feed(self, path: str) -> DemoFeed:
        return self._feeds_by_path[path]

    def article(self, key: str) -> DemoArticle:
        item = self.by_key[key]
        if not isinstance(item, DemoArticle):
            raise KeyError(f"{key} is a failure-case entry, not an article")
        return item

    def feed_items(self, feed: DemoFeed) -> list[FeedItem]:
        """The items a feed lists: explicit keys in their order, else its sections' items newest first."""
        if feed.item_keys:
            return [self.by_key[key] for key in feed.item_keys]
        items: list[FeedItem] = [
            item
            for item in [*self.articles, *self.broken_entries]
            if item.outlet == feed.outlet
            and (
                not feed.sections
                or item.section in feed.sections
                or (isinstance(item, DemoArticle) and feed.feed_id in item.feed_links)
            )
        ]
        return sorted(items, key=lambda item: (item.published_at, item.key), reverse=True)

    def feed_link(self, item: FeedItem, feed: DemoFeed, base_url: str) -> str:
        """The absolute link a feed gives an item; URL variants add tracking parameters or another path."""
        base_url = base_url.rstrip("/")
        template = item.feed_links.get(feed.feed_id) if isinstance(item, DemoArticle) else None
        if template is None:
            return base_url + item.path
        return _format_link(template, item.path, base_url)

    def article_urls(self, key: str, base_url: str) -> list[str]:
        """An article's canonical URL, then every other link that a served feed gives it."""
        article = self.article(key)
        urls = [article.canonical_url(base_url)]
        for feed in self.feeds:
            if feed.failure == "http_500":
                continue
            for item in self.feed_items(feed):
                if item.key == key:
                    link = self.feed_link(item, feed, base_url)
                    if link not in urls:
                        urls.append(link)
        return urls

    def sitemap_articles(self) -> dict[str, list[DemoArticle]]:
        """The articles the served feeds list, by outlet, newest first: what the news sitemaps give."""
        listed: dict[str, DemoArticle] = {}
        for feed in self.feeds:
            if feed.failure != "http_500":
                listed.update((item.key, item) for item in self.feed_items(feed) if isinstance(item, DemoArticle))
        by_outlet: dict[str, list[DemoArticle]] = {}
        for article in sorted(listed.values(), key=lambda a: (a.published_at, a.key), reverse=True):
            by_outlet.setdefault(article.outlet, []).append(article)
        return by_outlet

    def render(self, path_and_query: str, base_url: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a request path; unknown paths get a 404 page."""
        path = path_and_query.split("#", 1)[0].split("?", 1)[0] or "/"
        base_url = base_url.rstrip("/")
        cache_key = (path, base_url)
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached
        response = self._render_uncached(path, base_url)
        if response[0] != 404:
            with self._cache_lock:
                self._cache[cache_key] = response
        return response

    def _build_routes(self) -> dict[str, tuple[str, str]]:
        routes: dict[str, tuple[str, str]] = {"/": ("home", ""), "/robots.txt": ("robots", "")}
        for slug in self.outlets:
            routes[f"/{slug}/"] = ("outlet", slug)
        for feed in self.feeds:
            _add_route(routes, feed.path, ("feed", feed.path))
        _add_route(routes, "/sitemap.xml", ("sitemap_index", ""))
        for slug in self.sitemap_articles():
            _add_route(routes, f"/sitemaps/{slug}.xml", ("sitemap", slug))
        for article in self.articles:
            for path in (article.path, *article.aliases):
                _add_route(routes, path, ("article", article.key))
        for entry in self.broken_entries:
            if entry.kind == "video":
                _add_route(routes, entry.path, ("video", entry.key))
        return routes

    def _render_uncached(self, path: str, base_url: str) -> tuple[int, str, bytes]:
        kind, name = self._routes.get(path, ("missing", path))
        if kind == "article":
            return 200, HTML_TYPE, self._article_html(self.article(name), base_url).encode()
        if kind == "feed":
            return self._feed_response(self._feeds_by_path[name], base_url)
        if kind == "video":
            entry = self.by_key[name]
            assert isinstance(entry, DemoBrokenEntry)
            return 200, HTML_TYPE, self._video_html(entry, base_url).encode()
        if kind == "home":
            return 200, HTML_TYPE, self._home_html(base_url).encode()
        if kind == "outlet":
            return 200, HTML_TYPE, self._outlet_html(self.outlets[name], base_url).encode()
        if kind == "sitemap_index":
            return 200, XML_TYPE, _sitemap_index_xml(self.sitemap_articles(), base_url).encode()
        if kind == "sitemap":
            outlet = self.outlets[name]
            return 200, XML_TYPE, _news_sitemap_xml(outlet, self.sitemap_articles()[name], base_url).encode()
        if kind == "robots":
            return 200, TEXT_TYPE, b"User-agent: *\nAllow: /\n"
        return 404, HTML_TYPE, _not_found_html(path).encode()

    def _related(self, outlet: str, exclude: str, base_url: str) -> list[tuple[str, str]]:
        others = [a for a in self.articles if a.outlet == outlet and a.key != exclude]
        others.sort(key=lambda a: (a.published_at, a.key), reverse=True)
        return [(a.title, a.canonical_url(base_url)) for a in others[:LATEST_COUNT]]

    def _article_html(self, article: DemoArticle, base_url: str) -> str:
        outlet = self.outlets[article.outlet]
        return _render_html(
            outlet,
            _template(self.root, outlet.template),
            title=article.title,
            author=article.author,
            published_at=article.published_at,
            body_html=_body_html(outlet, article.paragraphs),
            description=_summary(article.paragraphs),
            canonical_url=article.canonical_url(base_url),
            section=article.section,
            byline_extra=article.byline_extra,
            related=self._related(article.outlet, article.key, base_url),
        )

    def _video_html(self, entry: DemoBrokenEntry, base_url: str) -> str:
        outlet = self.outlets[entry.outlet]
        body = (
            f'<div class="video-player" data-src="/glitch/media/{html.escape(entry.key)}.m3u8">'
            "<noscript>Please enable JavaScript to watch this video.</noscript></div>\n"
            f'<div class="video-caption">{html.escape(entry.caption)}</div>'
        )
        return _render_html(
            outlet,
            _template(self.root, outlet.template),
            title=entry.title,
            author=entry.author,
            published_at=entry.published_at,
            body_html=body,
            description=entry.caption,
            canonical_url=base_url + entry.path,
            section=entry.section,
            byline_extra="",
            related=self._related(entry.outlet, entry.key, base_url),
        )

    def _feed_response(self, feed: DemoFeed, base_url: str) -> tuple[int, str, bytes]:
        if feed.failure == "http_500":
            body = "<html><body><h1>500 Internal Server Error</h1><p>upstream timed out</p></body></html>"
            return 500, HTML_TYPE, body.encode()
        outlet = self.outlets[feed.outlet]
        items = self.feed_items(feed)
        if feed.format == "atom":
            return 200, ATOM_TYPE, _atom_xml(self, outlet, feed, items, base_url).encode()
        document = _rss_xml(self, outlet, feed, items, base_url)
        if feed.failure == "truncated":
            document = _truncate_last_item(document)
        return 200, RSS_TYPE, document.encode()

    def _home_html(self, base_url: str) -> str:
        rows = []
        for feed in self.feeds:
            label = f" (failure case: {feed.failure or 'bad entries'})" if feed.broken else ""
            url = html.escape(base_url + feed.path)
            rows.append(f'<li><a href="{url}">{html.escape(feed.title)}</a> [{feed.format}]{label}</li>')
        outlets = "".join(
            f'<li><a href="/{o.slug}/">{html.escape(o.name)}</a>: {html.escape(o.kind)}</li>'
            for o in self.outlets.values()
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>Demo news site</title></head><body><h1>Demo news site</h1>"
            "<p>Fictional outlets and articles for the news-ingest demo.</p>"
            f"<h2>Outlets</h2><ul>{outlets}</ul><h2>Feeds</h2><ul>{''.join(rows)}</ul></body></html>\n"
        )

    def _outlet_html(self, outlet: DemoOutlet, base_url: str) -> str:
        articles = sorted(
            (a for a in self.articles if a.outlet == outlet.slug),
            key=lambda a: (a.published_at, a.key),
            reverse=True,
        )
        items = "".join(
            f'<li><a href="{html.escape(a.canonical_url(base_url))}">{html.escape(a.title)}</a></li>'
            for a in articles
        )
        name = html.escape(outlet.name)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}</title></head>'
            f"<body><h1>{name}</h1><ul>{items}</ul></body></html>\n"
        )


def load_site(root: Path = DEMO_ROOT) -> DemoSite:
    """Load outlets, articles and expectations from the demo directory, validating them."""
    outlets = _load_outlets(root)
    articles, broken = _load_articles(root, outlets)
    expected = yaml.safe_load((root / "expected.yaml").read_text(encoding="utf-8"))
    site = DemoSite(root, outlets, articles, broken, expected)
    for feed in site.feeds:
        for key in feed.item_keys:
            if key not in site.by_key:
                raise ValueError(f"feed {feed.path} lists unknown item {key}")
    LOGGER.debug("loaded demo site: %d outlets, %d articles", len(outlets), len(articles))
    return site


def render_page(
    outlet: str,
    *,
    title: str,
    author: str | None,
    published_at: datetime,
    paragraphs: list[str],
    canonical_url: str,
    section: str = "World",
    byline_extra: str = "",
    related: Sequence[tuple[str, str]] = (),
) -> str:
    """Put any text into an outlet's page template; `related` fills the latest-headlines box."""
    outlets = _outlets_cached(DEMO_ROOT)
    if outlet not in outlets:
        raise ValueError(f"unknown outlet {outlet!r}; choose one of {sorted(outlets)}")
    spec = outlets[outlet]
    return _render_html(
        spec,
        _template(DEMO_ROOT, spec.template),
        title=title,
        author=author,
        published_at=published_at,
        body_html=_body_html(spec, paragraphs),
        description=_summary(paragraphs),
        canonical_url=canonical_url,
        section=section,
        byline_extra=byline_extra,
        related=related,
    )


class _DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], site: DemoSite) -> None:
        super().__init__(address, _DemoHandler)
        self.site = site
        self.base_url = ""

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOGGER.debug("demo site: connection from %s ended with an error", client_address, exc_info=True)


class _DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DemoNews/1.0"
    timeout = 30
    # Headers and body go out in separate writes; without TCP_NODELAY keep-alive clients wait ~40 ms each.
    disable_nagle_algorithm = True
    server: _DemoServer

    def do_GET(self) -> None:
        self._respond(include_body=True)

    def do_HEAD(self) -> None:
        self._respond(include_body=False)

    def _respond(self, include_body: bool) -> None:
        status, content_type, body = self.server.site.render(self.path, self.server.base_url)
        etag = f'"{hashlib.sha256(body).hexdigest()[:24]}"'
        if status == 200 and etag in self.headers.get("If-None-Match", ""):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if status == 200 and "gzip" in self.headers.get("Accept-Encoding", "").lower():
            body = _gzipped(body)  # as news sites serve their pages
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        if status == 200:
            self.send_header("ETag", etag)
            self.send_header("Cache-Control", "max-age=60")
            self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        if include_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        LOGGER.debug("demo site %s: " + format, self.address_string(), *args)


@lru_cache(maxsize=256)
def _gzipped(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=6, mtime=0)


@contextmanager
def serve(
    site: DemoSite | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    base_url: str | None = None,
) -> Iterator[str]:
    """Serve the site from a daemon thread and yield its base URL; port 0 picks a free port."""
    site = site if site is not None else load_site()
    server = _DemoServer((host, port), site)
    url_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    server.base_url = (base_url or f"http://{url_host}:{server.server_address[1]}").rstrip("/")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="demosite", daemon=True
    )
    thread.start()
    LOGGER.info("demo site serving on %s", server.base_url)
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Serve the demo site until interrupted and print its feed URLs."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.demosite",
        description="Serve the fictional demo news site (articles and RSS/Atom feeds) until Ctrl-C.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port, 0 for any (default %(default)s)"
    )
    parser.add_argument("--base-url", default=None, help="base URL used in links and canonicals")
    parser.add_argument("--root", type=Path, default=DEMO_ROOT, help="demo data directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    site = load_site(args.root)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with serve(site, args.host, args.port, base_url=args.base_url) as base_url:
        print(f"Demo news site: {base_url}/  ({len(site.articles)} articles, {len(site.outlets)} outlets)")
        print("Feeds:")
        for path in site.feed_paths():
            print(f"  {base_url}{path}")
        print("Failure-case feeds:")
        for feed in site.feeds:
            if feed.broken:
                print(f"  {base_url}{feed.path}  ({feed.failure or 'entries that fail'})")
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("Stopping.")
    return 0


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _add_route(routes: dict[str, tuple[str, str]], path: str, target: tuple[str, str]) -> None:
    if routes.get(path, target) != target:
        raise ValueError(f"two things claim the path {path}: {routes[path]} and {target}")
    routes[path] = target


def _format_link(template: str, path: str, base_url: str) -> str:
    link = template.format(path=path, base=base_url, netloc=urlsplit(base_url).netloc)
    return base_url + link if link.startswith("/") else link


@lru_cache(maxsize=4)
def _outlets_cached(root: Path) -> dict[str, DemoOutlet]:
    return _load_outlets(root)


@lru_cache(maxsize=32)
def _template(root: Path, name: str) -> Template:
    return Template((root / "templates" / name).read_text(encoding="utf-8"))


def _parse_offset(text: str) -> timezone:
    sign = -1 if text.startswith("-") else 1
    hours, minutes = text.lstrip("+-").split(":")
    offset = sign * timedelta(hours=int(hours), minutes=int(minutes))
    return UTC if not offset else timezone(offset)


def _load_outlets(root: Path) -> dict[str, DemoOutlet]:
    data = yaml.safe_load((root / "outlets.yaml").read_text(encoding="utf-8"))
    outlets: dict[str, DemoOutlet] = {}
    for raw in data["outlets"]:
        slug = raw["slug"]
        feeds = []
        for f in raw["feeds"]:
            if f["format"] not in FEED_FORMATS or f.get("failure") not in (None, *FEED_FAILURES):
                raise ValueError(f"feed {f['path']}: bad format or failure")
            feeds.append(
                DemoFeed(
                    outlet=slug,
                    feed_id=f["id"],
                    path=f["path"],
                    title=f["title"],
                    format=f["format"],
                    sections=tuple(f.get("sections") or ()),
                    broken=bool(f.get("broken", False)),
                    failure=f.get("failure"),
                    item_keys=tuple(f.get("items") or ()),
                )
            )
        outlets[slug] = DemoOutlet(
            slug=slug,
            name=raw["name"],
            kind=raw["kind"],
            template=raw["template"],
            tz=_parse_offset(raw["utc_offset"]),
            path_pattern=raw["path_pattern"],
            date_display=raw["date_display"],
            rss_author=raw["rss_author"],
            rss_author_email=raw.get("rss_author_email", ""),
            rss_guid=raw["rss_guid"],
            paragraph_open=raw["paragraph_open"],
            promo_after=int(raw["promo_after"]),
            promo_html=raw["promo_html"],
            most_read=tuple(raw["most_read"]),
            feeds=tuple(feeds),
        )
    return outlets


def _parse_time(value: str, where: str) -> datetime:
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        raise ValueError(f"{where}: published time {value} has no time zone")
    return moment.astimezone(UTC)


def _slugify(text: str) -> str:
    return "-".join(text.lower().split())


def _article_path(outlet: DemoOutlet, section: str, slug: str, published_at: datetime) -> str:
    local = published_at.astimezone(outlet.tz)
    return outlet.path_pattern.format(
        section=_slugify(section),
        yyyy=f"{local.year:04d}",
        mm=f"{local.month:02d}",
        dd=f"{local.day:02d}",
        slug=slug,
    )


def _apply_edits(paragraphs: list[str], edits: dict[str, Any], key: str) -> list[str]:
    """Derive a near copy's paragraphs from the original's by small, checked edits."""
    unknown = set(edits) - NEAR_EDIT_KEYS
    if unknown:
        raise ValueError(f"{key}: unknown edit keys {sorted(unknown)}")
    result = list(paragraphs)
    for old, new in edits.get("replace", []):
        hits = [i for i, text in enumerate(result) if old in text]
        if len(hits) != 1 or result[hits[0]].count(old) != 1:
            raise ValueError(f"{key}: replacement text {old!r} must occur exactly once")
        result[hits[0]] = result[hits[0]].replace(old, new)
    drops = set(edits.get("drop", []))
    inserts = {int(index): text for index, text in (edits.get("insert_after") or {}).items()}
    if not all(0 <= i < len(result) for i in drops | set(inserts)):
        raise ValueError(f"{key}: paragraph index out of range")
    edited = []
    for index, text in enumerate(result):
        if index not in drops:
            edited.append(text)
        if index in inserts:
            edited.append(inserts[index])
    edited.extend(edits.get("append", []))
    return edited


def _load_articles(
    root: Path, outlets: dict[str, DemoOutlet]
) -> tuple[list[DemoArticle], list[DemoBrokenEntry]]:
    raw_by_key: dict[str, tuple[str, dict[str, Any]]] = {}
    broken: list[DemoBrokenEntry] = []
    for source in sorted((root / "articles").glob("*.yaml")):
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
        outlet = outlets[data["outlet"]]
        for raw in data.get("articles", []):
            if raw["key"] in raw_by_key:
                raise ValueError(f"duplicate article key {raw['key']}")
            raw_by_key[raw["key"]] = (outlet.slug, raw)
        for raw in data.get("entries", []):
            published_at = _parse_time(raw["published"], raw["key"])
            if raw["kind"] not in BROKEN_KINDS:
                raise ValueError(f"{raw['key']}: kind must be one of {BROKEN_KINDS}")
            broken.append(
                DemoBrokenEntry(
                    key=raw["key"],
                    outlet=outlet.slug,
                    path=_article_path(outlet, raw["section"], raw["slug"], published_at),
                    title=raw["title"],
                    author=raw["author"],
                    published_at=published_at,
                    section=raw["section"],
                    kind=raw["kind"],
                    summary=raw["summary"],
                    caption=raw.get("caption", ""),
                    reason=raw["reason"],
                )
            )
    originals = {key: raw for key, (_, raw) in raw_by_key.items() if not raw.get("copy_of")}
    articles: list[DemoArticle] = []
    for key, (slug, raw) in raw_by_key.items():
        articles.append(_build_article(key, outlets[slug], raw, originals))
    articles.sort(key=lambda a: (a.published_at, a.key))
    return articles, broken


def _build_article(
    key: str, outlet: DemoOutlet, raw: dict[str, Any], originals: dict[str, dict[str, Any]]
) -> DemoArticle:
    copy_of = raw.get("copy_of")
    copy_kind = raw.get("copy_kind")
    source = raw
    if copy_of:
        if copy_of not in originals or copy_kind not in COPY_KINDS:
            raise ValueError(f"{key}: copy_of must name an original and copy_kind be one of {COPY_KINDS}")
        source = originals[copy_of]
    paragraphs = [" ".join(p.split()) for p in source["paragraphs"]]
    if copy_kind == "near":
        paragraphs = [" ".join(p.split()) for p in _apply_edits(paragraphs, raw.get("edits") or {}, key)]
    elif copy_kind == "exact" and raw.get("edits"):
        raise ValueError(f"{key}: an exact copy takes no edits")
    topics = list(raw.get("topics", source.get("topics", [])))
    if any(topic not in TOPIC_LABELS for topic in topics):
        raise ValueError(f"{key}: topics must be among {TOPIC_LABELS}")
    published_at = _parse_time(raw["published"], key)
    path = _article_path(outlet, raw["section"], raw["slug"], published_at)
    feed_links = {str(k): str(v) for k, v in (raw.get("feed_links") or {}).items()}
    aliases = {urlsplit(_format_link(t, path, "http://demo.invalid")).path for t in feed_links.values()}
    aliases.discard(path)
    return DemoArticle(
        key=key,
        outlet=outlet.slug,
        path=path,
        title=raw["title"],
        author=raw.get("author", source["author"]),
        published_at=published_at,
        paragraphs=paragraphs,
        section=raw["section"],
        topics=topics,
        copy_of=copy_of,
        copy_kind=copy_kind,
        byline_extra=raw.get("byline_extra", ""),
        feed_links=feed_links,
        aliases=tuple(sorted(aliases)),
    )


def _summary(paragraphs: Sequence[str]) -> str:
    words = " ".join(paragraphs[:1]).split()
    if len(words) <= SUMMARY_WORDS:
        return " ".join(words)
    return " ".join(words[:SUMMARY_WORDS]) + "…"


def _body_html(outlet: DemoOutlet, paragraphs: Sequence[str]) -> str:
    lines = []
    for index, text in enumerate(paragraphs):
        lines.append(f"{outlet.paragraph_open}{html.escape(text, quote=False)}</p>")
        if outlet.promo_html and index + 1 == outlet.promo_after and index + 1 < len(paragraphs):
            lines.append(outlet.promo_html)
    return "\n".join(lines)


def _display_date(outlet: DemoOutlet, moment: datetime) -> str:
    local = moment.astimezone(outlet.tz)
    return outlet.date_display.format(
        weekday=local.strftime("%A"),
        wkd=local.strftime("%a"),
        month=local.strftime("%B"),
        mon=local.strftime("%b"),
        day=local.day,
        year=local.year,
        mm=f"{local.month:02d}",
        dd=f"{local.day:02d}",
        hh=f"{local.hour:02d}",
        mi=f"{local.minute:02d}",
        h12=local.hour % 12 or 12,
        ampm="a.m." if local.hour < 12 else "p.m.",
    )


def _local_iso(outlet: DemoOutlet, moment: datetime) -> str:
    return moment.astimezone(outlet.tz).isoformat(timespec="seconds")


def _render_html(
    outlet: DemoOutlet,
    template: Template,
    *,
    title: str,
    author: str | None,
    published_at: datetime,
    body_html: str,
    description: str,
    canonical_url: str,
    section: str,
    byline_extra: str,
    related: Sequence[tuple[str, str]],
) -> str:
    if published_at.tzinfo is None:
        raise ValueError("published_at must be time-zone aware")
    esc = html.escape
    byline = f"By {author}" if author else ""
    if byline_extra:
        byline = f"{byline}, {byline_extra}" if byline else byline_extra
    published_iso = _local_iso(outlet, published_at)
    jsonld = {
        "@context": "https://schema.org",
        "@type": "NewsArticle",
        "headline": title,
        "datePublished": published_iso,
        "author": {"@type": "Person", "name": author} if author else None,
        "publisher": {"@type": "Organization", "name": outlet.name},
        "mainEntityOfPage": canonical_url,
    }
    front = f"/{outlet.slug}/"
    return template.substitute(
        most_read_json=", ".join(_json_text(h) for h in outlet.most_read),
        latest_json=", ".join(_json_text({"title": t, "url": url}) for t, url in related),
        title=esc(title),
        author=esc(author or ""),
        byline=esc(byline),
        canonical=esc(canonical_url),
        description=esc(description),
        published_iso=published_iso,
        date_display=esc(_display_date(outlet, published_at)),
        section=esc(section),
        section_slug=esc(_slugify(section)),
        body=body_html,
        most_read="\n".join(f'<li><a href="{front}">{esc(h)}</a></li>' for h in outlet.most_read),
        latest="\n".join(f'<li><a href="{esc(url)}">{esc(t)}</a></li>' for t, url in related),
        jsonld=_json_text({k: v for k, v in jsonld.items() if v}),
    )


def _json_text(value: Any) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def _not_found_html(path: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Page not found</title></head>'
        f"<body><h1>404: page not found</h1><p>No page at {html.escape(path)}.</p>"
        '<p><a href="/">Back to the demo news site</a></p></body></html>\n'
    )


def _rss_xml(site: DemoSite, outlet: DemoOutlet, feed: DemoFeed, items: list[FeedItem], base_url: str) -> str:
    esc = xml_escape
    newest = max((item.published_at for item in items), default=datetime(2026, 11, 1, tzinfo=UTC))
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        'xmlns:atom="http://www.w3.org/2005/Atom">',
        "<channel>",
        f"  <title>{esc(feed.title)}</title>",
        f"  <link>{esc(base_url)}/{outlet.slug}/</link>",
        f"  <description>{esc(outlet.name)}: the latest stories</description>",
        "  <language>en</language>",
        f'  <atom:link href={quoteattr(base_url + feed.path)} rel="self" type="application/rss+xml"/>',
        f"  <lastBuildDate>{format_datetime(newest.astimezone(outlet.tz))}</lastBuildDate>",
    ]
    for item in items:
        item_outlet = site.outlets[item.outlet]
        if outlet.rss_author == "author":
            author = f"  <author>{esc(f'{outlet.rss_author_email} ({item.author})')}</author>"
        else:
            author = f"  <dc:creator>{esc(item.author)}</dc:creator>"
        if outlet.rss_guid == "permalink" and item.outlet == outlet.slug:
            guid = f'<guid isPermaLink="true">{esc(base_url + item.path)}</guid>'
        else:
            guid = f'<guid isPermaLink="false">{esc(f"{item_outlet.slug}:{item.key}")}</guid>'
        lines += [
            "  <item>",
            f"    <title>{esc(item.title)}</title>",
            f"    <link>{esc(site.feed_link(item, feed, base_url))}</link>",
            f"    {guid}",
            f"    <pubDate>{format_datetime(item.published_at.astimezone(outlet.tz))}</pubDate>",
            f"  {author}",
            f"    <category>{esc(item.section)}</category>",
            f"    <description>{esc(_item_summary(item))}</description>",
            "  </item>",
        ]
    lines += ["</channel>", "</rss>", ""]
    return "\n".join(lines)


def _sitemap_index_xml(by_outlet: dict[str, list[DemoArticle]], base_url: str) -> str:
    """A sitemap index: one news sitemap per outlet, last modified when its newest article was published."""
    lines = ['<?xml version="1.0" encoding="utf-8"?>',
             '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">']
    for slug, articles in by_outlet.items():
        lines += [
            "  <sitemap>",
            f"    <loc>{xml_escape(f'{base_url}/sitemaps/{slug}.xml')}</loc>",
            f"    <lastmod>{articles[0].published_at.astimezone(UTC).isoformat(timespec='seconds')}</lastmod>",
            "  </sitemap>",
        ]
    lines += ["</sitemapindex>", ""]
    return "\n".join(lines)


def _news_sitemap_xml(outlet: DemoOutlet, articles: list[DemoArticle], base_url: str) -> str:
    """An outlet's Google News sitemap: canonical URLs, with publication date and title."""
    esc = xml_escape
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
        'xmlns:news="http://www.google.com/schemas/sitemap-news/0.9">',
    ]
    for article in articles:
        published = _local_iso(outlet, article.published_at)
        lines += [
            "  <url>",
            f"    <loc>{esc(article.canonical_url(base_url))}</loc>",
            f"    <lastmod>{published}</lastmod>",
            "    <news:news>",
            f"      <news:publication><news:name>{esc(outlet.name)}</news:name>"
            "<news:language>en</news:language></news:publication>",
            f"      <news:publication_date>{published}</news:publication_date>",
            f"      <news:title>{esc(article.title)}</news:title>",
            "    </news:news>",
            "  </url>",
        ]
    lines += ["</urlset>", ""]
    return "\n".join(lines)


def _atom_xml(
    site: DemoSite, outlet: DemoOutlet, feed: DemoFeed, items: list[FeedItem], base_url: str
) -> str:
    esc = xml_escape
    newest = max((item.published_at for item in items), default=datetime(2026, 11, 1, tzinfo=UTC))
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">',
        f"  <title>{esc(feed.title)}</title>",
        f"  <id>tag:{TAG_AUTHORITY},2026:{outlet.slug}/{feed.feed_id}</id>",
        f"  <updated>{_local_iso(outlet, newest)}</updated>",
        f'  <link rel="self" type="application/atom+xml" href={quoteattr(base_url + feed.path)}/>',
        f'  <link rel="alternate" type="text/html" href={quoteattr(f"{base_url}/{outlet.slug}/")}/>',
        f"  <author><name>{esc(outlet.name)}</name></author>",
    ]
    for item in items:
        stamp = _local_iso(outlet, item.published_at)
        link = site.feed_link(item, feed, base_url)
        lines += [
            "  <entry>",
            f"    <title>{esc(item.title)}</title>",
            f'    <link rel="alternate" type="text/html" href={quoteattr(link)}/>',
            f"    <id>tag:{TAG_AUTHORITY},{item.published_at:%Y-%m-%d}:{item.outlet}/{item.key}</id>",
            f"    <published>{stamp}</published>",
            f"    <updated>{stamp}</updated>",
            f"    <author><name>{esc(item.author)}</name></author>",
            f"    <category term={quoteattr(item.section)}/>",
            f'    <summary type="text">{esc(_item_summary(item))}</summary>',
            "  </entry>",
        ]
    lines += ["</feed>", ""]
    return "\n".join(lines)


def _item_summary(item: FeedItem) -> str:
    return _summary(item.paragraphs) if isinstance(item, DemoArticle) else item.summary


def _truncate_last_item(document: str) -> str:
    """Cut the document inside the last item's title, as a dropped connection would."""
    last = document.rfind("<item>")
    title_at = document.index("<title>", last) + len("<title>")
    return document[: title_at + 12]


if __name__ == "__main__":
    raise SystemExit(main())


def register_feeds(conn: Any, site: DemoSite, base_url: str, include_broken: bool = False) -> int:
    """Register the site's feeds (and outlets as sources) in the news database; returns how many."""
    from pipeline import store

    count = 0
    for feed in site.feeds:
        if feed.broken and not include_broken:
            continue
        outlet = site.outlets[feed.outlet]
        source_id = store.upsert_source(conn, outlet.name, f"{base_url}/{outlet.slug}/")
        store.upsert_feed(conn, base_url + feed.path, source_id, feed.title)
        count += 1
    return count

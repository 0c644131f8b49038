"""A hostile web on loopback: one route per way a feed or page server can hurt a crawler (slow drip, endless
body, gzip and deflate bombs, a body in a coding never offered (brotli), redirect loop, redirects into private
addresses, a 50 MB page, a 10,000-item feed, broken and mislabelled charsets, an XML entity bomb, 100,000
nested elements, binary as HTML, error statuses)."""

from __future__ import annotations

import gzip
import zlib
from http.server import BaseHTTPRequestHandler

from tests.loopback import Route, respond, slow_drip

OLD = "Mon, 02 Jan 2006 15:04:05 GMT"  # items of feed cases: outside the run's window, their pages never fetched
UMLAUT_LINK = "https://umlaut.example/Pjöngjang-Außenminister"
CHUNK = b"<p>" + b"x" * 65_530 + b"</p>"
RSS_TYPE = "application/rss+xml; charset=utf-8"
GERMAN = ("Der Außenminister sagte in Pjöngjang, die Sanktionen gegen Nordkorea würden verschärft, "
          "und die Gespräche über Öl und Kohle gingen weiter. ")


def _article(title: str, sentence: str, charset: str = "utf-8") -> bytes:
    return (f"<!DOCTYPE html><html><head><meta charset='{charset}'><title>{title}</title></head><body>"
            f"<article><h1>{title}</h1><p>{sentence * 5}</p><p>{sentence * 3}</p></article></body></html>"
            ).encode()


GOOD_PAGES = {
    "/pages/good-1": _article("Harbour cranes resume work", "Dock workers in the northern harbour returned to "
                              "the cranes on Tuesday after a week-long dispute over night shifts ended. "),
    "/pages/good-2": _article("Rail freight volumes climb", "Freight operators reported that rail volumes rose "
                              "for a third month as grain and timber moved towards the western ports. "),
    "/pages/good-3": _article("Library opens its archive", "The city library opened its photographic archive "
                              "to the public, with glass plates from the early harbour years on display. "),
}


def _stream(total: int | None) -> Route:
    """A 200 text/html body of `total` bytes (None: without end), sent without Content-Length."""
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html; charset=utf-8")
        handler.send_header("Connection", "close")
        handler.end_headers()
        sent = 0
        try:
            handler.wfile.write(b"<html><body>")
            while total is None or sent < total:
                handler.wfile.write(CHUNK)
                sent += len(CHUNK)
        except OSError:
            pass
    return route


def _redirect(location: str) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return route


def _rss(items: list[tuple[str, str]], title: str = "Hostile") -> bytes:
    """An RSS document of (link, RFC 822 date) items."""
    body = "".join(f"<item><title>{link.rsplit('/', 1)[-1]}</title><link>{link}</link><pubDate>{date}</pubDate>"
                   f"</item>" for link, date in items)
    return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{title}</title>{body}'
            "</channel></rss>").encode()


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%s;" % (b"" if i == 1 else b"%d" % (i - 1))) * 10)
                     for i in range(1, 10))
          + b']><rss version="2.0"><channel><title>&lol9;</title><item><title>&lol9;</title>'
            b"<link>https://laughs.example/1</link></item></channel></rss>")
NESTED = b"<html><body>" + b"<div>" * 100_000 + b"<p>deep</p>" + b"</div>" * 100_000 + b"</body></html>"
GZIP_BOMB = gzip.compress(b"\0" * 200_000_000, compresslevel=9)  # 200 MB of zeros in about 200 kB
DEFLATE_BOMB = zlib.compress(b"\0" * 200_000_000, 9)  # the same in the zlib container of Content-Encoding: deflate
# what a server ignoring Accept-Encoding sends as brotli: refused by its label before a byte is read, so it
# does not matter what it would inflate to (the bytes here are a brotli stream's header, not a whole one)
BROTLI_LABELLED = b"\x1b\xff\xff\x7f" + b"\0" * 1024


def routes(base_url: str, private_url: str, published: str) -> dict[str, Route]:
    """Every hostile route of a server at `base_url`; `private_url` is a server the pipeline must never reach;
    page items are dated `published` (inside the run's window)."""
    pages = [
        "/pages/good-1", "/pages/good-2", "/pages/slow-drip", "/pages/endless", "/pages/gzip-bomb",
        "/pages/deflate-bomb", "/pages/brotli",
        "/pages/redirect-loop", "/pages/to-metadata", "/pages/to-loopback", "/pages/50mb", "/pages/invalid-utf8",
        "/pages/mislabelled", "/pages/nested", "/pages/binary", "/pages/404", "/pages/410", "/pages/500",
        "/pages/429",
    ]
    german_page = _article("Pjöngjang", GERMAN)
    found: dict[str, Route] = {path: respond(200, body) for path, body in GOOD_PAGES.items()}
    found.update({
        "/pages/slow-drip": slow_drip(every=0.1),
        "/pages/endless": _stream(None),
        "/pages/50mb": _stream(50 * 1024 * 1024),
        "/pages/gzip-bomb": respond(200, GZIP_BOMB, headers={"Content-Encoding": "gzip"}),
        "/pages/deflate-bomb": respond(200, DEFLATE_BOMB, headers={"Content-Encoding": "deflate"}),
        "/pages/brotli": respond(200, BROTLI_LABELLED, headers={"Content-Encoding": "br"}),
        "/pages/redirect-loop": _redirect("/pages/redirect-loop?again"),
        "/pages/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        "/pages/to-loopback": _redirect(f"{private_url}/admin"),
        "/pages/invalid-utf8": respond(200, german_page.replace(b"sagte", b"sa\xffgte")),
        "/pages/mislabelled": respond(200, _article("Pjöngjang", GERMAN, charset="iso-8859-1"),
                                      content_type="text/html; charset=iso-8859-1"),
        "/pages/nested": respond(200, NESTED),
        "/pages/binary": respond(200, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 64),
        "/pages/404": respond(404, b"<p>not here</p>"),
        "/pages/410": respond(410, b"<p>gone</p>"),
        "/pages/500": respond(500, b"<p>oops</p>"),
        # a short wait: the host is paused for it, so the pages after it wait instead of being left to a later run
        "/pages/429": respond(429, b"<p>slow down</p>", headers={"Retry-After": "1"}),
        "/feeds/pages.xml": respond(200, _rss([(f"{base_url}{path}", published) for path in pages]),
                                    content_type=RSS_TYPE),
        "/feeds/good.xml": respond(200, _rss([(f"{base_url}/pages/good-3", published)], "Good"),
                                   content_type=RSS_TYPE),
        "/feeds/ten-thousand.xml": respond(200, _rss([(f"https://big.example/{i}", OLD)
                                                      for i in range(10_000)]), content_type=RSS_TYPE),
        "/feeds/laughs.xml": respond(200, LAUGHS, content_type="application/rss+xml"),
        "/feeds/mislabelled.xml": respond(200, _rss([(f"{UMLAUT_LINK}-mislabelled", OLD)], "Café"),
                                          content_type="application/rss+xml; charset=iso-8859-1"),
        "/feeds/invalid-utf8.xml": respond(200, _rss([(f"{UMLAUT_LINK}-invalid", OLD)], "Café").replace(
            b"Au\xc3\x9fenminister-invalid</title>", b"Au\xc3\x9fen\xffminister-invalid</title>"),
                                           content_type=RSS_TYPE),
        "/feeds/binary.xml": respond(200, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, content_type=RSS_TYPE),
        "/feeds/404.xml": respond(404, b"missing"),
        "/feeds/410.xml": respond(410, b"gone"),
        "/feeds/500.xml": respond(500, b"oops"),
        "/feeds/429.xml": respond(429, b"slow down", headers={"Retry-After": "3600"}),
        "/feeds/slow-drip.xml": slow_drip(every=0.1),
    })
    return found

"""The HTTP client against real servers on loopback: redirects, caps, errors, conditional GET, refusals."""

from __future__ import annotations

import gzip
from http.server import BaseHTTPRequestHandler

import pytest

from pipeline.http import HttpClient
from pipeline.settings import Settings
from tests.loopback import respond, serve

PAGE = b"<html><body><p>hello</p></body></html>"


def _redirect(location: str):
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return route


def _conditional(handler: BaseHTTPRequestHandler) -> None:
    if handler.headers.get("If-None-Match") == '"v1"':
        handler.send_response(304)
        handler.end_headers()
        return
    respond(200, PAGE, headers={"ETag": '"v1"'})(handler)


def _gzipped(handler: BaseHTTPRequestHandler) -> None:
    body = gzip.compress(PAGE)
    respond(200, body, headers={"Content-Encoding": "gzip"})(handler)


def _chunked_large(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.end_headers()  # no Content-Length: the cap must hold while streaming
    for _ in range(64):
        handler.wfile.write(b"x" * 4096)


BOMB = gzip.compress(b"\0" * 20_000_000)  # 20 MB of zeros in about 20 kB


def _gzip_route(body: bytes):
    return respond(200, body, headers={"Content-Encoding": "gzip"})


ROUTES = {
    "/ok": respond(200, PAGE),
    "/hop": _redirect("/ok"),
    "/loop-a": _redirect("/loop-b"),
    "/loop-b": _redirect("/loop-a"),
    "/gone": respond(410, b"gone"),
    "/busy": respond(503, b"busy", headers={"Retry-After": "120"}),
    "/etag": _conditional,
    "/gz": _gzipped,
    "/big-declared": respond(200, b"y" * 200_000),
    "/big-streamed": _chunked_large,
    "/gz-bomb": _gzip_route(BOMB),
    "/gz-cut": _gzip_route(gzip.compress(PAGE * 50)[:-30]),
    "/gz-members": _gzip_route(gzip.compress(PAGE) + gzip.compress(b"<p>more</p>")),
    "/gz-junk": _gzip_route(gzip.compress(PAGE) + b"trailing junk"),
    "/gz-endless-junk": _gzip_route(gzip.compress(PAGE) + b"j" * 300_000),
}


@pytest.fixture
def server():
    with serve(ROUTES) as running:
        yield running


def client(**overrides: object) -> HttpClient:
    return HttpClient(Settings(allow_private_addresses=True, **overrides))


def test_get_returns_body_and_identifies_itself(server) -> None:
    result = client(user_agent="news-ingest-test/1").get(f"{server.base_url}/ok")
    assert result.ok and result.status == 200 and result.body == PAGE
    assert server.headers_seen[0]["User-Agent"] == "news-ingest-test/1"


def test_redirects_are_followed_and_final_url_recorded(server) -> None:
    result = client().get(f"{server.base_url}/hop")
    assert result.body == PAGE
    assert result.final_url == f"{server.base_url}/ok"


def test_redirect_loop_stops_at_the_limit(server) -> None:
    result = client(max_redirects=3).get(f"{server.base_url}/loop-a")
    assert not result.ok and "more than 3 redirects" in (result.error or "")
    assert len(server.hits) == 4


def test_http_errors_say_whether_a_retry_may_help(server) -> None:
    gone = client().get(f"{server.base_url}/gone")
    busy = client().get(f"{server.base_url}/busy")
    assert (gone.error, gone.retryable) == ("HTTP 410", False)
    assert (busy.error, busy.retryable) == ("HTTP 503", True)
    assert busy.headers["retry-after"] == "120"


def test_conditional_get_sends_validators_and_accepts_304(server) -> None:
    first = client().get(f"{server.base_url}/etag")
    second = client().get(f"{server.base_url}/etag", etag=first.headers["etag"])
    assert first.status == 200 and second.status == 304 and second.ok and second.body == b""


def test_gzip_bodies_are_decoded(server) -> None:
    assert client().get(f"{server.base_url}/gz").body == PAGE


def test_gzip_bodies_can_be_kept_as_sent_after_a_full_check(server) -> None:
    kept = client().get(f"{server.base_url}/gz", keep_gzip=True)
    assert kept.ok and kept.body_encoding == "gzip" and gzip.decompress(kept.body) == PAGE
    plain = client().get(f"{server.base_url}/ok", keep_gzip=True)  # nothing to keep: the server did not compress
    assert plain.ok and plain.body_encoding == "identity" and plain.body == PAGE


def test_bytes_after_the_gzip_stream_count_against_the_cap(server) -> None:
    result = client(max_bytes=100_000).get(f"{server.base_url}/gz-endless-junk", keep_gzip=True)
    assert not result.ok and "body too large" in (result.error or "")


@pytest.mark.parametrize("keep_gzip", [False, True])
def test_a_decompression_bomb_stops_at_the_cap(server, keep_gzip: bool) -> None:
    result = client(max_bytes=1_000_000).get(f"{server.base_url}/gz-bomb", keep_gzip=keep_gzip)
    assert not result.ok and "body too large" in (result.error or "") and result.body == b""


def test_a_gzip_body_cut_short_is_a_retryable_failure_not_a_stored_page(server) -> None:
    result = client().get(f"{server.base_url}/gz-cut", keep_gzip=True)
    assert not result.ok and result.retryable and "cut short" in (result.error or "")


def test_gzip_bodies_with_more_members_or_trailing_junk_are_kept_decoded(server) -> None:
    members = client().get(f"{server.base_url}/gz-members", keep_gzip=True)
    assert members.ok and members.body_encoding == "identity" and members.body == PAGE + b"<p>more</p>"
    junk = client().get(f"{server.base_url}/gz-junk", keep_gzip=True)
    assert junk.ok and junk.body_encoding == "identity" and junk.body == PAGE


@pytest.mark.parametrize("path", ["/big-declared", "/big-streamed"])
def test_body_cap_holds_with_and_without_content_length(server, path: str) -> None:
    result = client(max_bytes=100_000).get(f"{server.base_url}{path}")
    assert not result.ok and "body too large" in (result.error or "")
    assert result.body == b""


def test_loopback_is_refused_unless_allowed_and_no_request_is_sent(server) -> None:
    result = HttpClient(Settings()).get(f"{server.base_url}/ok")
    assert not result.ok and "not public" in (result.error or "")
    assert server.hits == []


def test_non_http_schemes_are_refused() -> None:
    result = client().get("file:///etc/passwd")
    assert not result.ok and "unsupported URL scheme" in (result.error or "")


def test_connection_refused_is_a_retryable_failure() -> None:
    with serve({}) as stopped:
        url = f"{stopped.base_url}/ok"
    result = client(connect_timeout=2).get(url)
    assert not result.ok and result.retryable and result.error.startswith("connection failed")


def test_successive_requests_work_when_the_server_drops_a_kept_alive_connection() -> None:
    from http.server import BaseHTTPRequestHandler as Handler

    def close_after_reply(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PAGE)))
        handler.end_headers()  # no "Connection: close": the client pools the connection ...
        handler.wfile.write(PAGE)
        handler.close_connection = True  # ... which the server then drops

    with serve({"/ok": close_after_reply}, keep_alive=True) as server:
        http = client()
        results = [http.get(f"{server.base_url}/ok") for _ in range(3)]
    assert all(r.ok and r.body == PAGE for r in results), [r.error for r in results]


def test_an_unread_error_body_does_not_leak_into_the_next_response() -> None:
    routes = {"/missing": respond(404, b"<!DOCTYPE html><p>not here</p>" * 50), "/ok": respond(200, PAGE),
              "/moved": respond(301, b"<p>moved</p>", headers={"Location": "/ok"})}
    with serve(routes, keep_alive=True) as server:
        http = client(page_concurrency=1)  # one pooled connection, reused for every request
        missing = http.get(f"{server.base_url}/missing")
        after_error = http.get(f"{server.base_url}/ok")
        after_redirect = http.get(f"{server.base_url}/moved")
    assert missing.error == "HTTP 404"
    assert after_error.ok and after_error.body == PAGE, after_error.error
    assert after_redirect.ok and after_redirect.body == PAGE, after_redirect.error

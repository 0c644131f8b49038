"""The HTTP client against real servers on loopback: redirects, caps, errors, conditional GET, refusals."""

from __future__ import annotations

import gzip
import ipaddress
import time
from http.server import BaseHTTPRequestHandler

import pytest

from pipeline.http import PAGE_TYPES, HttpClient, is_public_address
from pipeline.settings import Settings
from tests.loopback import respond, serve, slow_drip

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
    result = client(user_agent="news-ingest-test/1", contact="desk@news.example").get(f"{server.base_url}/ok")
    assert result.ok and result.status == 200 and result.body == PAGE
    assert server.headers_seen[0]["User-Agent"] == "news-ingest-test/1 (+desk@news.example)"


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
    assert not result.ok and not result.retryable and "not public" in (result.error or "")
    by_name = HttpClient(Settings()).get(f"http://localhost:{server.port}/ok")  # checked after resolution
    assert not by_name.ok and "address 127.0.0.1 of host 'localhost' is not public" in (by_name.error or "")
    assert server.hits == []


def test_a_redirect_from_an_allowed_host_to_a_refused_one_sends_no_request_there() -> None:
    with serve({"/ok": respond(200, PAGE)}) as inside:
        routes = {"/to-inside": _redirect(f"{inside.base_url}/ok"),
                  "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
                  "/to-metadata6": _redirect("http://[fd00:ec2::254]/latest/meta-data/")}
        with serve(routes, host="127.0.0.2") as outside:
            # the production policy, with the outside server's address allowed as an intranet host would be
            http = HttpClient(Settings(allowed_networks="127.0.0.2/32, 169.254.0.0/16"))
            to_inside = http.get(f"{outside.base_url}/to-inside")
            tick = time.monotonic()
            to_metadata = http.get(f"{outside.base_url}/to-metadata")
            to_metadata6 = http.get(f"{outside.base_url}/to-metadata6")
            quick = time.monotonic() - tick
            default = HttpClient(Settings()).get(f"{outside.base_url}/to-inside")
    assert not to_inside.ok and not to_inside.retryable
    assert "address 127.0.0.1 of host '127.0.0.1' is not public" in (to_inside.error or "")
    assert to_inside.final_url == f"{inside.base_url}/ok"
    # metadata services stay refused even inside an allowed network
    assert "169.254.169.254" in to_metadata.error and "cloud metadata" in to_metadata.error
    assert "fd00:ec2::254" in to_metadata6.error and "cloud metadata" in to_metadata6.error
    assert quick < 1  # refused before any connection attempt, not after a connect timeout
    assert not default.ok and "127.0.0.2" in default.error  # the real policy refuses the first hop already
    assert inside.hits == []  # from the server's side: not one request reached the refused address
    assert outside.hits == ["/to-inside", "/to-metadata", "/to-metadata6"]


def test_an_allowed_name_is_connected_by_its_vetted_address_and_keeps_its_host_header(server) -> None:
    http = HttpClient(Settings(), address_policy=lambda address: address.is_loopback)
    result = http.get(f"http://localhost:{server.port}/ok")
    assert result.ok and result.body == PAGE
    assert server.headers_seen[0]["Host"] == f"localhost:{server.port}"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200", "100.64.0.1",
    "0.0.0.0", "224.0.0.251", "224.0.1.1", "240.0.0.1", "255.255.255.255", "192.0.0.192", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "2002:7f00:1::1", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


def test_binary_or_mistyped_content_is_refused_when_a_kind_is_expected() -> None:
    routes = {"/pdf-as-html": respond(200, b"%PDF-1.7\n" + bytes(range(256)) * 8),
              "/nul-as-html": respond(200, b"<html>" + b"\x00" * 64 + b"</html>"),
              "/image": respond(200, b"\x89PNG\r\n\x1a\n....", content_type="image/png"),
              "/ok": respond(200, PAGE)}
    with serve(routes) as running:
        http = client()
        pdf, nul, image, ok = (http.get(f"{running.base_url}{path}", content_types=PAGE_TYPES)
                               for path in routes)
        untyped = http.get(f"{running.base_url}/image")  # no kind expected: bytes as sent
    assert pdf.error == "binary content (PDF) served as text/html" and not pdf.retryable
    assert nul.error == "binary content (binary) served as text/html"
    assert image.error == "unexpected content type 'image/png' (expected text/html or application/xhtml+xml)"
    assert ok.ok and untyped.ok


def test_a_slow_drip_cannot_hold_a_fetch_past_the_total_timeout() -> None:
    with serve({"/drip": slow_drip(every=0.2, declared=100_000)}) as running:
        tick = time.monotonic()
        result = client(read_timeout=5, total_timeout=1.5).get(f"{running.base_url}/drip")
        took = time.monotonic() - tick
    assert not result.ok and result.retryable and result.error == "took longer than 1.5 s"
    assert took < 2.5


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


def test_empty_redirects_and_304s_on_a_kept_alive_connection_reach_the_server_once_each() -> None:
    with serve(ROUTES, keep_alive=True) as running:
        http = client(max_redirects=3, page_concurrency=1)
        looped = http.get(f"{running.base_url}/loop-a")
        first = http.get(f"{running.base_url}/etag")
        again = [http.get(f"{running.base_url}/etag", etag=first.headers["etag"]) for _ in range(2)]
        after = http.get(f"{running.base_url}/ok")
    assert "more than 3 redirects" in looped.error and [r.status for r in again] == [304, 304] and after.ok
    assert running.hits == ["/loop-a", "/loop-b", "/loop-a", "/loop-b", "/etag", "/etag", "/etag", "/ok"]


def _self_signed(tmp_path, name: str):
    """A key and a self-signed certificate for `name`, as PEM files."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_tls_to_a_vetted_address_keeps_the_host_name_for_sni_and_the_certificate(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    key_path, cert_path = _self_signed(tmp_path, "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # trusted as the default CA store, for this test only
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    with serve({"/ok": respond(200, PAGE)}, tls=context) as running:
        http = HttpClient(Settings(), address_policy=lambda address: address.is_loopback)
        by_name = http.get(f"https://localhost:{running.port}/ok")
        by_address = http.get(f"https://127.0.0.1:{running.port}/ok")
    assert by_name.ok and by_name.body == PAGE, by_name.error
    assert server_names[0] == "localhost"  # SNI is the name, though the socket went to the vetted 127.0.0.1
    assert running.headers_seen[0]["Host"] == f"localhost:{running.port}"
    # the certificate is checked against the URL's host: the same server by address does not match it
    assert not by_address.ok and "certificate" in by_address.error.lower() and len(running.hits) == 1

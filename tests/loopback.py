"""A tiny HTTP server on 127.0.0.1 whose routes tests define, counting every request it receives."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[[BaseHTTPRequestHandler], None]


class LoopbackServer:
    """Routes by path; `hits` records every path requested, in order."""

    def __init__(self, routes: dict[str, Route], keep_alive: bool = False, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None) -> None:
        self.routes = routes
        self.hits: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_GET(self) -> None:
                server.hits.append(self.path)
                server.headers_seen.append(dict(self.headers.items()))
                route = server.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.base_url = f"{'https' if tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@contextmanager
def serve(routes: dict[str, Route], keep_alive: bool = False, host: str = "127.0.0.1",
          tls: ssl.SSLContext | None = None) -> Iterator[LoopbackServer]:
    """Serve `routes` on `host` (a loopback address), over TLS with a `tls` server context; with `keep_alive`
    the server speaks HTTP/1.1 and keeps connections open."""
    server = LoopbackServer(routes, keep_alive, host, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def respond(status: int, body: bytes = b"", content_type: str = "text/html; charset=utf-8",
            headers: dict[str, str] | None = None) -> Route:
    """A route answering with a fixed status, body and headers."""
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
    return route


def slow_drip(every: float, declared: int = 1_000_000, content_type: str = "text/html; charset=utf-8") -> Route:
    """A route that promises `declared` bytes and sends one every `every` seconds, each wait far below any
    read timeout, until the client gives up."""
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        try:
            for _ in range(declared):
                handler.wfile.write(b"<")
                handler.wfile.flush()
                time.sleep(every)
        except OSError:
            pass  # the client gave up, as it should
    return route

"""A static page server for the benchmark, run as its own process: HTTP/1.1 keep-alive, and gzip (compressed
once at start, as a news site's cache or CDN serves it) to clients that accept it.

    python bench/page_server.py --root DIR --port N
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import mimetypes
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _PageServer

    def do_GET(self) -> None:
        found = self.server.files.get(self.path.split("?", 1)[0])
        if found is None:
            self.send_error(404)
            return
        content_type, plain, packed = found
        accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "").lower()
        body = packed if accepts_gzip else plain
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if accepts_gzip:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, root: Path) -> None:
        # everything is compressed before the port opens: the benchmark starts measuring once it is open
        self.files: dict[str, tuple[str, bytes, bytes]] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file():
                plain = path.read_bytes()
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                if content_type.startswith("text/") or content_type.endswith("xml"):
                    content_type += "; charset=utf-8"
                self.files["/" + path.relative_to(root).as_posix()] = (
                    content_type, plain, gzip.compress(plain, compresslevel=6, mtime=0))
        super().__init__(("127.0.0.1", port), _Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="directory to serve")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    server = _PageServer(args.port, args.root)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Failure alerts over real sockets on 127.0.0.1: a JSON webhook and an SMTP server of our own."""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline import alerts
from pipeline.settings import Settings


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 that keeps the JSON body of every POST; yields (url, bodies)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def smtp_sink() -> Iterator[tuple[str, list[str]]]:
    """The smallest SMTP server that accepts mail; yields (host:port, messages as received)."""
    messages: list[str] = []

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"220 sink ready\r\n")
            while line := self.rfile.readline():
                verb = line.decode().strip().split(" ", 1)[0].upper()
                if verb == "DATA":
                    self.wfile.write(b"354 go on\r\n")
                    lines = []
                    while (data := self.rfile.readline()) not in (b".\r\n", b""):
                        lines.append(data.decode())
                    messages.append("".join(lines))
                    self.wfile.write(b"250 kept\r\n")
                elif verb == "QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:  # EHLO, HELO, MAIL, RCPT, RSET, NOOP
                    self.wfile.write(b"250 ok\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", messages
    finally:
        server.shutdown()
        server.server_close()


def test_an_alert_is_logged_posted_and_mailed_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    details = {"task_id": "check_empty_bodies", "error": "quality check empty_bodies failed: 0.0175"}
    with webhook_receiver() as (url, posted), smtp_sink() as (smtp, mails):
        settings = Settings(alert_webhook=url, alert_email="desk@example.invalid, ops@example.invalid",
                            smtp_host=smtp)
        with caplog.at_level(logging.ERROR, logger="pipeline.alerts"):
            delivered = alerts.notify_failure(settings, "news_ingest.check_empty_bodies failed", details)
    assert delivered == ["log", "webhook", "email"]
    assert posted == [{"subject": "news_ingest.check_empty_bodies failed", **details}]
    assert len(mails) == 1 and "Subject: [news-ingest] news_ingest.check_empty_bodies failed" in mails[0]
    assert "To: desk@example.invalid, ops@example.invalid" in mails[0]
    assert "error: quality check empty_bodies failed: 0.0175" in mails[0]
    assert "ALERT news_ingest.check_empty_bodies failed" in caplog.text


def test_without_channels_an_alert_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pipeline.alerts"):
        assert alerts.notify_failure(Settings(), "x failed", {"error": "boom"}) == ["log"]
    assert '"error": "boom"' in caplog.text


def test_an_unreachable_channel_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with webhook_receiver() as (url, _posted):
        pass  # closed again: nothing listens there now
    settings = Settings(alert_webhook=url, alert_email="desk@example.invalid", smtp_host=url.split("/")[2])
    with caplog.at_level(logging.WARNING, logger="pipeline.alerts"):
        assert alerts.notify_failure(settings, "x failed", {"error": "boom"}) == ["log"]
    assert "alert webhook" in caplog.text and "alert e-mail" in caplog.text

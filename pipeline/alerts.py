"""Failure alerts: always a log line; a JSON webhook and e-mail when the settings name them."""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.request
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from pipeline.settings import Settings

LOGGER = logging.getLogger(__name__)

ALERT_TIMEOUT = 10.0  # seconds; an alert must not hold a failing task for long
ALERT_SENDER = "news-ingest@localhost"


def notify_failure(settings: Settings, subject: str, details: Mapping[str, Any]) -> list[str]:
    """Log the failure, then POST it to NEWS_ALERT_WEBHOOK and mail it to NEWS_ALERT_EMAIL when set.

    Returns the channels that took the alert. A channel that cannot be reached is logged, never raised: the
    task has failed already and its own error is the one to keep."""
    LOGGER.error("ALERT %s: %s", subject, json.dumps(details, default=str, sort_keys=True))
    delivered = ["log"]
    if settings.alert_webhook:
        try:
            _post_webhook(settings.alert_webhook, {"subject": subject, **details})
            delivered.append("webhook")
        except OSError as exc:
            LOGGER.warning("alert webhook %s not reached: %s", settings.alert_webhook, exc)
    if settings.alert_email:
        try:
            _send_email(settings, subject, details)
            delivered.append("email")
        except (OSError, smtplib.SMTPException) as exc:
            LOGGER.warning("alert e-mail through %s not sent: %s", settings.smtp_host, exc)
    return delivered


def _post_webhook(url: str, payload: Mapping[str, Any]) -> None:
    body = json.dumps(payload, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "news-ingest"})
    # urllib, not our HttpClient: an alert endpoint is often on a private network, which the client refuses
    with urllib.request.urlopen(request, timeout=ALERT_TIMEOUT) as response:
        response.read()


def _send_email(settings: Settings, subject: str, details: Mapping[str, Any]) -> None:
    host, _, port = settings.smtp_host.rpartition(":") if ":" in settings.smtp_host else (settings.smtp_host, "", "25")
    message = EmailMessage()
    message["Subject"] = f"[news-ingest] {subject}"
    message["From"] = ALERT_SENDER
    message["To"] = ", ".join(a.strip() for a in (settings.alert_email or "").split(",") if a.strip())
    message.set_content("\n".join(f"{key}: {value}" for key, value in details.items()))
    with smtplib.SMTP(host, int(port), timeout=ALERT_TIMEOUT) as smtp:
        smtp.send_message(message)

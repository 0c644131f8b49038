"""Politeness towards the sites fetched: robots.txt, turns per host shared through Postgres, Retry-After, caching.

How turns work. Every request to a host waits for its turn. Within one process a semaphore per host bounds the
requests in flight (NEWS_HOST_CONCURRENCY). Across processes (mapped Airflow tasks, on any executor) the spacing
of request starts (NEWS_HOST_DELAY, raised by a robots.txt Crawl-delay up to NEWS_CRAWL_DELAY_MAX) is kept in
the host_slots table: a fetch reserves its start with one atomic upsert that moves the host's next free moment on
by the delay and returns how long to sleep until the reserved start. The row lock orders rival reservations and
the wait is measured on the database's clock, so the processes' clocks need not agree. A start further off than
NEWS_HOST_MAX_WAIT is not reserved: the fetch is deferred (a retryable failure, for a later run). A 429 or 503
with Retry-After moves the host's next free moment to the end of the asked wait, for every process. With an
effective delay above 0, the concurrency holds across processes too: a request also holds one of the host's
NEWS_HOST_CONCURRENCY places, a session advisory lock (host key, place) on a connection of its own, which
PostgreSQL releases by itself if the process dies. With an effective delay of 0 no database round trip is
made: only the semaphore bounds the host, in its process, and a Retry-After pause is honoured within the process
(it is still written, so that processes spacing their requests see it).

robots.txt is fetched with our own HttpClient (vetted addresses, size cap, timeouts) in a turn like any request,
kept in robots_txt for NEWS_ROBOTS_MAX_AGE_HOURS so that every process reuses it, and looked up at most once per
origin by one Politeness object (one fetch_feeds call). After RFC 9309: a 4xx means no rules; a 5xx, a 429 or no
answer means nothing may be fetched for now (retryable, and kept only briefly). Only pages are checked against
robots.txt (feeds are published to be polled), and only a page's (or robots.txt's) Retry-After pauses its host;
a feed's sets when that feed is polled next. The in-memory dictionaries are caches; what must hold across
processes is held in Postgres.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult, urlsplit

from protego import Protego
from sqlalchemy import Connection, Engine, text

from pipeline.http import HttpClient
from pipeline.models import FetchResult
from pipeline.settings import Settings

LOGGER = logging.getLogger(__name__)

PAUSING_STATUSES = frozenset({429, 503})
ROBOTS_MAX_CHARS = 500 * 1024  # RFC 9309 asks parsers to read at least 500 KiB; the rest is ignored
ROBOTS_FAILURE_MAX_AGE = timedelta(minutes=10)  # an unreachable robots.txt is asked for again this soon
DEFAULT_PORTS = {"http": 80, "https": 443}
DEFERRED = "deferred:"  # how the error of a fetch not made, because its host's turn is too far off, begins
DISALLOWED = "disallowed by robots.txt"
PLACE_POLL = 0.05  # seconds between looks for a free place at a host whose places other processes hold


@dataclass(frozen=True)
class CachePolicy:
    """What a response's Cache-Control and Expires say: how long it stays fresh, and whether to keep it."""

    fresh_for: timedelta | None = None
    no_store: bool = False


def cache_policy(headers: Mapping[str, str]) -> CachePolicy:
    """Freshness from `max-age` (else Expires less Date; an unreadable Expires is already stale) and `no-store`."""
    directives: dict[str, str] = {}
    for part in headers.get("cache-control", "").split(","):
        name, _sep, value = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = value.strip().strip('"')
    no_store = "no-store" in directives
    if "max-age" in directives:
        seconds = directives["max-age"]
        return CachePolicy(timedelta(seconds=int(seconds)) if seconds.isdigit() else None, no_store)
    if "expires" in headers:
        expires = _http_date(headers["expires"])
        base = _http_date(headers.get("date", "")) or datetime.now(UTC)
        return CachePolicy(max(timedelta(0), expires - base) if expires else timedelta(0), no_store)
    return CachePolicy(None, no_store)


def retry_after(headers: Mapping[str, str]) -> timedelta | None:
    """The wait a Retry-After header asks for (seconds, or an HTTP-date measured from the response's Date)."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    moment = _http_date(value)
    if moment is None:
        return None
    base = _http_date(headers.get("date", "")) or datetime.now(UTC)
    return max(timedelta(0), moment - base)


def _http_date(value: str) -> datetime | None:
    if not value.strip():
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def without_validators(result: FetchResult) -> FetchResult:
    """The result with its ETag and Last-Modified dropped (a `no-store` response must not be kept)."""
    headers = {name: value for name, value in result.headers.items() if name not in ("etag", "last-modified")}
    return replace(result, headers=headers)


def deferred(result: FetchResult) -> bool:
    """Whether the fetch was not made because its host's turn was further off than the wait allowed."""
    return result.status is None and (result.error or "").startswith(DEFERRED)


def _not_fetched(url: str, reason: str, retryable: bool) -> FetchResult:
    return FetchResult(url, url, None, {}, b"", 0.0, reason, retryable)


@dataclass(frozen=True)
class RobotsRules:
    """What one origin's robots.txt says: its parsed rules, no rules at all, or why nothing may be fetched now."""

    parser: Protego | None = None
    unavailable: str | None = None

    def refusal(self, url: str, token: str) -> tuple[str, bool] | None:
        """(reason, retryable) when `url` must not be fetched, else None."""
        if self.unavailable:
            return self.unavailable, True
        if self.parser is not None and not self.parser.can_fetch(url, token):
            return DISALLOWED, False
        return None

    def crawl_delay(self, token: str) -> float:
        if self.parser is None:
            return 0.0
        return float(self.parser.crawl_delay(token) or 0.0)


def _rules(outcome: str, body: str | None, status: int | None, error: str | None) -> RobotsRules:
    if outcome == "rules":
        return RobotsRules(parser=Protego.parse(body or ""))
    if outcome == "unavailable":
        return RobotsRules(unavailable=f"robots.txt unavailable ({error or f'HTTP {status}'}); retried later")
    return RobotsRules()


def _robots_outcome(result: FetchResult) -> str:
    """RFC 9309: a 2xx gives rules; a 4xx (but 429) none; a 5xx, a 429 or no answer means unreachable. A refusal
    of ours (an address not allowed, a body over the cap) gives no rules: the page's own fetch decides."""
    if result.ok and result.status is not None and 200 <= result.status < 300:
        return "rules"
    if result.status == 429 or (result.status or 0) >= 500 or (result.status is None and result.retryable):
        return "unavailable"
    return "allow_all"


class HostTurns:
    """Whose turn it is at a host: a semaphore per host in this process; with a delay, places held and request
    starts spaced through Postgres for every process."""

    def __init__(self, engine: Engine, concurrency: int, max_wait: float) -> None:
        self._engine, self._concurrency, self._max_wait = engine, max(1, concurrency), max_wait
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.Semaphore] = {}
        self._paused_until: dict[str, float] = {}  # time.monotonic() values

    @contextmanager
    def turn(self, host: str, delay: float) -> Iterator[str | None]:
        """Hold one of the host's places while the body runs, after sleeping until a start at least `delay`
        seconds after the host's previous one; yields None, or the reason the fetch is deferred instead."""
        with self._lock:
            semaphore = self._semaphores.setdefault(host, threading.Semaphore(self._concurrency))
        with semaphore:
            wait = self._paused_until.get(host, 0.0) - time.monotonic()
            if wait > self._max_wait:
                yield self._deferral(host, wait)
                return
            if delay <= 0:
                if wait > 0:
                    time.sleep(wait)
                yield None
                return
            with self._place(host) as (conn, waited):
                if waited is None:
                    yield self._deferral(host, self._max_wait)
                    return
                reserved = self._reserve(conn, host, delay)
                if reserved is None or reserved + waited > self._max_wait:
                    yield self._deferral(host, reserved if reserved is not None else self._remaining(conn, host))
                    return
                wait = max(wait - waited, reserved)
                if wait > 0:
                    time.sleep(wait)
                yield None

    @contextmanager
    def _place(self, host: str) -> Iterator[tuple[Connection, float | None]]:
        """Hold one of the host's places across every process (a session advisory lock on a connection of its
        own, in autocommit, which the caller also reserves its start on) while the body runs; yields that
        connection and the seconds waited for the place, or None if none came free in time."""
        key = int.from_bytes(hashlib.blake2b(f"host:{host}".encode(), digest_size=4).digest(), "big", signed=True)
        started = time.monotonic()
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            place = None
            while place is None:
                for candidate in range(self._concurrency):
                    if conn.execute(text("SELECT pg_try_advisory_lock(:key, :place)"),
                                    {"key": key, "place": candidate}).scalar():
                        place = candidate
                        break
                else:
                    if time.monotonic() - started > self._max_wait:
                        yield conn, None
                        return
                    time.sleep(PLACE_POLL)
            try:
                yield conn, time.monotonic() - started
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key, :place)"), {"key": key, "place": place})

    def pause(self, host: str, wait: float) -> None:
        """Let no request start at `host` for `wait` seconds, in this process and (through host_slots) in all."""
        with self._lock:
            self._paused_until[host] = max(self._paused_until.get(host, 0.0), time.monotonic() + wait)
        with self._engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO host_slots AS s (host, next_at) "
                "VALUES (:host, clock_timestamp() + make_interval(secs => CAST(:wait AS double precision))) "
                "ON CONFLICT (host) DO UPDATE SET next_at = greatest(s.next_at, excluded.next_at)"
            ), {"host": host, "wait": wait})

    def _reserve(self, conn: Connection, host: str, delay: float) -> float | None:
        """Reserve the host's next start; seconds until it, or None when that start is past the longest wait."""
        wait = conn.execute(text(
            "INSERT INTO host_slots AS s (host, next_at) "
            "VALUES (:host, clock_timestamp() + make_interval(secs => CAST(:delay AS double precision))) "
            "ON CONFLICT (host) DO UPDATE "
            "  SET next_at = greatest(s.next_at, clock_timestamp()) "
            "                + make_interval(secs => CAST(:delay AS double precision)) "
            "  WHERE s.next_at <= clock_timestamp() + make_interval(secs => CAST(:max_wait AS double precision)) "
            "RETURNING CAST(extract(epoch FROM s.next_at - clock_timestamp()) AS double precision) - :delay"
        ), {"host": host, "delay": delay, "max_wait": self._max_wait}).scalar()
        return None if wait is None else max(0.0, float(wait))

    def _remaining(self, conn: Connection, host: str) -> float:
        wait = conn.execute(text(
            "SELECT CAST(extract(epoch FROM next_at - clock_timestamp()) AS double precision) "
            "FROM host_slots WHERE host = :host"
        ), {"host": host}).scalar()
        return float(wait or 0.0)

    def _deferral(self, host: str, wait: float) -> str:
        LOGGER.info("%s: next turn in %.0f s, over the %g s a fetch may wait: deferred", host, wait, self._max_wait)
        return (f"{DEFERRED} the next turn at {host} is {wait:.0f} s away (Retry-After or a queue), more than "
                f"NEWS_HOST_MAX_WAIT ({self._max_wait:g} s); left to a later run")


class Politeness:
    """Fetches through robots.txt, the host turns and Retry-After; one per fetch_feeds call, shared by threads."""

    def __init__(self, engine: Engine, client: HttpClient, settings: Settings) -> None:
        self._engine, self._client, self._settings = engine, client, settings
        self._token = settings.robots_token
        self._turns = HostTurns(engine, settings.host_concurrency, settings.host_max_wait)
        self._lock = threading.Lock()
        self._robots: dict[tuple[str, str, int], RobotsRules] = {}
        self._robots_locks: dict[tuple[str, str, int], threading.Lock] = {}

    def fetch(self, url: str, get: Callable[[], FetchResult], *, page: bool = True) -> FetchResult:
        """`get()` (a fetch of `url`) in the host's turn, unless the turn is too far off. A page must also be
        allowed by robots.txt, and its 429 or 503 with Retry-After pauses the host (said in the error); a
        feed's Retry-After only sets when that feed is polled next."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if not host or parts.scheme.lower() not in DEFAULT_PORTS:
            return get()  # the client refuses it, with its reason
        delay = self._settings.host_delay
        if page and self._settings.respect_robots:
            rules = self._robots_rules(parts)
            refusal = rules.refusal(url, self._token)
            if refusal:
                LOGGER.info("page %s not fetched: %s", url, refusal[0])
                return _not_fetched(url, *refusal)
            delay = max(delay, min(rules.crawl_delay(self._token), self._settings.crawl_delay_max))
        return self._in_turn(host, url, delay, get, pause=page)

    def _in_turn(self, host: str, url: str, delay: float, get: Callable[[], FetchResult], *, pause: bool
                 ) -> FetchResult:
        with self._turns.turn(host, delay) as deferral:
            result = get() if deferral is None else _not_fetched(url, deferral, True)
        if not pause or result.status not in PAUSING_STATUSES:
            return result
        asked = retry_after(result.headers)
        if asked is None:
            return result
        wait = min(asked, self._settings.feed_backoff_max).total_seconds()
        self._turns.pause(host, wait)
        LOGGER.warning("%s answered HTTP %s asking to wait %g s: paused", host, result.status, wait)
        return replace(result, error=f"HTTP {result.status}: asked to retry after {wait:g} s (Retry-After); "
                                     f"{host} paused")

    def _robots_rules(self, parts: SplitResult) -> RobotsRules:
        scheme = parts.scheme.lower()
        origin = (scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS[scheme])
        with self._lock:
            lock = self._robots_locks.setdefault(origin, threading.Lock())
        with lock:  # one lookup per origin: the other threads wait for it and share its answer
            rules = self._robots.get(origin)
            if rules is None:
                rules = self._stored_robots(origin) or self._fetch_robots(origin, parts)
                if rules.unavailable is None or not rules.unavailable.startswith(DEFERRED):
                    self._robots[origin] = rules
            return rules

    def _stored_robots(self, origin: tuple[str, str, int]) -> RobotsRules | None:
        with self._engine.begin() as conn:
            row = conn.execute(text(
                "SELECT outcome, body, status, error FROM robots_txt "
                "WHERE scheme = :scheme AND host = :host AND port = :port AND expires_at > now()"
            ), dict(zip(("scheme", "host", "port"), origin, strict=True))).one_or_none()
        return None if row is None else _rules(row.outcome, row.body, row.status, row.error)

    def _fetch_robots(self, origin: tuple[str, str, int], parts: SplitResult) -> RobotsRules:
        url = f"{parts.scheme.lower()}://{parts.netloc}/robots.txt"
        result = self._in_turn(origin[1], url, self._settings.host_delay,
                               lambda: self._client.get(url, accept="text/plain"), pause=True)
        if deferred(result):
            return RobotsRules(unavailable=result.error)
        outcome = _robots_outcome(result)
        body = result.content.decode("utf-8", "replace")[:ROBOTS_MAX_CHARS] if outcome == "rules" else None
        max_age = self._settings.robots_max_age
        if outcome == "unavailable":
            max_age = min(max_age, ROBOTS_FAILURE_MAX_AGE)
        LOGGER.info("robots.txt of %s: %s (%s)", url, outcome, result.error or f"HTTP {result.status}")
        with self._engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO robots_txt (scheme, host, port, outcome, status, body, error, fetched_at, expires_at) "
                "VALUES (:scheme, :host, :port, :outcome, :status, :body, :error, now(), now() + :max_age) "
                "ON CONFLICT (scheme, host, port) DO UPDATE SET outcome = excluded.outcome, "
                "  status = excluded.status, body = excluded.body, error = excluded.error, "
                "  fetched_at = excluded.fetched_at, expires_at = excluded.expires_at"
            ), {"scheme": origin[0], "host": origin[1], "port": origin[2], "outcome": outcome,
                "status": result.status, "body": body, "error": result.error, "max_age": max_age})
        return _rules(outcome, body, result.status, result.error)

"""One frozen Settings object, read from the environment once, at the edge."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "NEWS_"


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot use."""


def _doc(text: str, env: str) -> dict[str, str]:
    return {"doc": text, "env": env}


@dataclass(frozen=True)
class Settings:
    """Every knob of the pipeline. Each field names its environment variable and says what it does."""

    database_url: str | None = field(
        default=None,
        metadata=_doc(
            "SQLAlchemy or libpq URL of the news database. Empty: the embedded PostgreSQL under data_dir.",
            "NEWS_DATABASE_URL",
        ),
    )
    data_dir: Path = field(
        default=PROJECT_ROOT / ".data",
        metadata=_doc("Where the embedded PostgreSQL keeps its files (git-ignored).", "NEWS_DATA_DIR"),
    )
    user_agent: str = field(
        default="news-ingest/0.1",
        metadata=_doc("Product token and version sent as the User-Agent, followed by NEWS_CONTACT; its first "
                      "word before the slash is the name looked up in robots.txt.", "NEWS_USER_AGENT"),
    )
    contact: str = field(
        default="https://example.invalid/news-ingest",
        metadata=_doc("E-mail address or URL where site operators reach whoever runs this crawler; sent in "
                      "the User-Agent as `(+contact)`. Set it to your own.", "NEWS_CONTACT"),
    )
    connect_timeout: float = field(
        default=10.0, metadata=_doc("Seconds to wait for a TCP connection.", "NEWS_CONNECT_TIMEOUT")
    )
    read_timeout: float = field(
        default=30.0, metadata=_doc("Seconds to wait between bytes of a response.", "NEWS_READ_TIMEOUT")
    )
    total_timeout: float = field(
        default=60.0, metadata=_doc("Seconds one fetch may take in all, redirects included.",
                                    "NEWS_TOTAL_TIMEOUT")
    )
    max_bytes: int = field(
        default=10 * 1024 * 1024,
        metadata=_doc("Largest response body accepted, in bytes (checked while streaming).", "NEWS_MAX_BYTES"),
    )
    max_redirects: int = field(
        default=5, metadata=_doc("Redirect hops followed before a fetch fails.", "NEWS_MAX_REDIRECTS")
    )
    allow_private_addresses: bool = field(
        default=False,
        metadata=_doc(
            "Allow fetching from loopback, private and link-local addresses (the demo and tests set it).",
            "NEWS_ALLOW_PRIVATE_ADDRESSES",
        ),
    )
    allowed_networks: str = field(
        default="",
        metadata=_doc(
            "Comma-separated networks (CIDR) fetched from although not public, e.g. an intranet feed server "
            "(cloud metadata addresses stay refused); narrower than NEWS_ALLOW_PRIVATE_ADDRESSES.",
            "NEWS_ALLOWED_NETWORKS",
        ),
    )
    page_concurrency: int = field(
        default=4, metadata=_doc("Pages fetched at once within one feed batch.", "NEWS_PAGE_CONCURRENCY")
    )
    host_concurrency: int = field(
        default=2,
        metadata=_doc("Requests in flight to one host at once from one fetching process.", "NEWS_HOST_CONCURRENCY"),
    )
    host_delay: float = field(
        default=1.0,
        metadata=_doc("Seconds between the starts of two requests to one host, kept across all fetching processes "
                      "through the database (0: no delay and no database round trip).", "NEWS_HOST_DELAY"),
    )
    host_max_wait: float = field(
        default=30.0,
        metadata=_doc("Longest a fetch waits for its turn at a host (after a 429 or 503 with Retry-After, or "
                      "behind a long queue); a page that would wait longer is left to a later run.",
                      "NEWS_HOST_MAX_WAIT"),
    )
    respect_robots: bool = field(
        default=True,
        metadata=_doc("Fetch pages only where the site's robots.txt allows it, and honour its Crawl-delay "
                      "(false: only for sites you run yourself).", "NEWS_RESPECT_ROBOTS"),
    )
    robots_max_age: timedelta = field(
        default=timedelta(hours=24),
        metadata=_doc("Hours a fetched robots.txt is kept in the database and reused by every process.",
                      "NEWS_ROBOTS_MAX_AGE_HOURS"),
    )
    crawl_delay_max: float = field(
        default=10.0,
        metadata=_doc("Largest robots.txt Crawl-delay honoured, in seconds; a larger one is cut to this.",
                      "NEWS_CRAWL_DELAY_MAX"),
    )
    feed_batch_size: int = field(
        default=10, metadata=_doc("Feeds handled by one mapped Airflow task.", "NEWS_FEED_BATCH_SIZE")
    )
    max_batches: int = field(
        default=32,
        metadata=_doc("Upper bound on mapped tasks per run; batches grow to stay under it.", "NEWS_MAX_BATCHES"),
    )
    lookback: timedelta = field(
        default=timedelta(hours=6),
        metadata=_doc(
            "Hours before the interval start whose entries a run also keeps, so items that reach a feed late "
            "are not lost between runs (re-seen items are never fetched twice).",
            "NEWS_LOOKBACK_HOURS",
        ),
    )
    archive_retention_days: int = field(
        default=90,
        metadata=_doc("Days fetched pages and feed documents stay in the raw archive (0: kept for ever); older "
                      "bytes are pruned by the news_maintenance DAG or `python -m pipeline archive prune`, and "
                      "replay cannot re-process them.", "NEWS_ARCHIVE_RETENTION_DAYS"),
    )
    sitemap_max_documents: int = field(
        default=20,
        metadata=_doc("Documents (an index and its child sitemaps) read from one sitemap source per run.",
                      "NEWS_SITEMAP_MAX_DOCUMENTS"),
    )
    max_page_attempts: int = field(
        default=5,
        metadata=_doc("Runs that retry a page after a transient failure before giving up on it.",
                      "NEWS_MAX_PAGE_ATTEMPTS"),
    )
    feed_max_failures: int = field(
        default=10,
        metadata=_doc("Consecutive failed polls after which a feed is disabled, with the last error as the reason "
                      "(HTTP 410 Gone disables at once; `feeds enable` starts again).", "NEWS_FEED_MAX_FAILURES"),
    )
    feed_backoff: timedelta = field(
        default=timedelta(minutes=5),
        metadata=_doc("Seconds a feed is left alone after a failed poll; the wait doubles with each further "
                      "failure (runs skip the feed until then, its stored items are still fetched).",
                      "NEWS_FEED_BACKOFF_SECONDS"),
    )
    feed_backoff_max: timedelta = field(
        default=timedelta(hours=6),
        metadata=_doc("Longest wait between polls of a failing feed, in seconds.", "NEWS_FEED_BACKOFF_MAX_SECONDS"),
    )
    feed_min_interval: timedelta = field(
        default=timedelta(minutes=10),
        metadata=_doc("Shortest wait between polls of a healthy feed, in seconds; a feed is polled about twice per "
                      "mean gap between its items, within this and the maximum.", "NEWS_FEED_MIN_INTERVAL_SECONDS"),
    )
    feed_max_interval: timedelta = field(
        default=timedelta(hours=4),
        metadata=_doc("Longest wait between polls of a healthy feed, in seconds; never more than the lookback, so "
                      "that no item ages out of the runs' window before a poll sees it.",
                      "NEWS_FEED_MAX_INTERVAL_SECONDS"),
    )
    min_words: int = field(
        default=20, metadata=_doc("Shortest body, in words, stored as an article.", "NEWS_MIN_WORDS")
    )
    shingle_words: int = field(
        default=5,
        metadata=_doc("Words per shingle of the near-duplicate signature (changing it: run `clusters sign`).",
                      "NEWS_SHINGLE_WORDS"),
    )
    minhash_permutations: int = field(
        default=64,
        metadata=_doc("MinHash values per signature (changing it: run `clusters sign`).",
                      "NEWS_MINHASH_PERMUTATIONS"),
    )
    lsh_bands: int = field(
        default=16,
        metadata=_doc("LSH bands the permutations are split into; must divide them (changing it: run "
                      "`clusters sign`).", "NEWS_LSH_BANDS"),
    )
    near_duplicate_threshold: float = field(
        default=0.4,
        metadata=_doc("Estimated Jaccard similarity of shingles from which a new article joins a stored "
                      "article's story cluster (0 to 1).", "NEWS_NEAR_DUPLICATE_THRESHOLD"),
    )
    taxonomy_path: Path | None = field(
        default=None,
        metadata=_doc("Topic taxonomy YAML file. Empty: the reviewed pipeline/taxonomy.yaml.", "NEWS_TAXONOMY"),
    )
    workers: int = field(
        default=max(1, min(4, os.cpu_count() or 1)),
        metadata=_doc("Extraction processes of `python -m pipeline run` (default: the CPU count, at most 4); "
                      "Airflow maps tasks instead.", "NEWS_WORKERS"),
    )
    schedule: str = field(
        default="@hourly",
        metadata=_doc("Schedule of the news_ingest DAG (cron expression or preset); each run covers the interval "
                      "from the previous tick to its own.", "NEWS_SCHEDULE"),
    )
    task_retries: int = field(
        default=3, metadata=_doc("Retries of a failed news_ingest task (0 allowed), with exponential backoff.",
                                 "NEWS_TASK_RETRIES")
    )
    retry_delay: timedelta = field(
        default=timedelta(minutes=1),
        metadata=_doc("Seconds before a failed task's first retry; later retries back off up to 15 minutes.",
                      "NEWS_RETRY_DELAY_SECONDS"),
    )
    max_active_runs: int = field(
        default=4, metadata=_doc("Runs of news_ingest allowed at once (backfills included).",
                                 "NEWS_MAX_ACTIVE_RUNS")
    )
    qc_empty_bodies_warn: float = field(
        default=0.01,
        metadata=_doc("Share of a run's processed feed items whose page gave no article text: "
                      "above this, the quality gate warns.",
                      "NEWS_QC_EMPTY_BODIES_WARN"),
    )
    qc_empty_bodies_fail: float = field(
        default=0.25,
        metadata=_doc("Share of a run's processed feed items whose page gave no article text: "
                      "above this, the quality gate fails the run (1: never).",
                      "NEWS_QC_EMPTY_BODIES_FAIL"),
    )
    qc_missing_dates_warn: float = field(
        default=0.05,
        metadata=_doc("Share of a run's loaded articles without a publication time: "
                      "above this, the quality gate warns.",
                      "NEWS_QC_MISSING_DATES_WARN"),
    )
    qc_missing_dates_fail: float = field(
        default=0.5,
        metadata=_doc("Share of a run's loaded articles without a publication time: "
                      "above this, the quality gate fails the run (1: never).",
                      "NEWS_QC_MISSING_DATES_FAIL"),
    )
    qc_future_dates_warn: float = field(
        default=0.0,
        metadata=_doc("Share of a run's loaded articles published over an hour after they were stored: "
                      "above this, the quality gate warns.",
                      "NEWS_QC_FUTURE_DATES_WARN"),
    )
    qc_future_dates_fail: float = field(
        default=0.05,
        metadata=_doc("Share of a run's loaded articles published over an hour after they were stored: "
                      "above this, the quality gate fails the run (1: never).",
                      "NEWS_QC_FUTURE_DATES_FAIL"),
    )
    qc_duplicate_ratio_warn: float = field(
        default=0.3,
        metadata=_doc("Share of a run's extracted items that were duplicates of a stored article: "
                      "above this, the quality gate warns.",
                      "NEWS_QC_DUPLICATE_RATIO_WARN"),
    )
    qc_duplicate_ratio_fail: float = field(
        default=1.0,
        metadata=_doc("Share of a run's extracted items that were duplicates of a stored article: "
                      "above this, the quality gate fails the run (1: never).",
                      "NEWS_QC_DUPLICATE_RATIO_FAIL"),
    )
    qc_failed_feeds_warn: float = field(
        default=0.05,
        metadata=_doc("Share of a run's feed polls that failed: above this, the quality gate warns.",
                      "NEWS_QC_FAILED_FEEDS_WARN"),
    )
    qc_failed_feeds_fail: float = field(
        default=0.5,
        metadata=_doc("Share of a run's feed polls that failed: "
                      "above this, the quality gate fails the run (1: never).",
                      "NEWS_QC_FAILED_FEEDS_FAIL"),
    )
    qc_topic_coverage_warn: float = field(
        default=0.01,
        metadata=_doc("Share of a run's loaded articles with at least one topic: below this, the quality gate warns.",
                      "NEWS_QC_TOPIC_COVERAGE_WARN"),
    )
    qc_topic_coverage_fail: float = field(
        default=0.0,
        metadata=_doc("Share of a run's loaded articles with at least one topic: "
                      "below this, the quality gate fails the run (0: never).",
                      "NEWS_QC_TOPIC_COVERAGE_FAIL"),
    )
    qc_min_rows: int = field(
        default=10,
        metadata=_doc("Rows a quality check needs before a breach can fail the run; on fewer it only warns.",
                      "NEWS_QC_MIN_ROWS"),
    )
    alert_webhook: str | None = field(
        default=None,
        metadata=_doc("URL that a failed news_ingest task POSTs a JSON alert to (empty: none).",
                      "NEWS_ALERT_WEBHOOK"),
    )
    alert_email: str | None = field(
        default=None,
        metadata=_doc("Comma-separated addresses e-mailed when a news_ingest task fails (empty: none).",
                      "NEWS_ALERT_EMAIL"),
    )
    smtp_host: str = field(
        default="localhost:25",
        metadata=_doc("SMTP server (host:port) for the alert e-mails.", "NEWS_SMTP_HOST"),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `environ` (default: os.environ); empty variables mean the default."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = env.get(spec.metadata["env"], "").strip()
            if raw:
                values[spec.name] = _parse(spec.name, spec.metadata["env"], raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def identity(self) -> str:
        """The User-Agent header: the product token with the contact, unless the token already names it."""
        if not self.contact or self.contact in self.user_agent:
            return self.user_agent
        return f"{self.user_agent} (+{self.contact})"

    @property
    def robots_token(self) -> str:
        """The name robots.txt groups are matched against: the User-Agent's product name (`news-ingest`)."""
        return self.user_agent.split(None, 1)[0].split("/", 1)[0] if self.user_agent.strip() else "*"


ZERO_ALLOWED = frozenset({"task_retries", "archive_retention_days"})  # integer settings where 0 means "none"
_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
               "off": False}


def _parse(name: str, env: str, raw: str) -> object:
    default = next(f for f in fields(Settings) if f.name == name).default
    try:
        if isinstance(default, bool):
            if raw.lower() not in _BOOL_WORDS:
                raise ValueError("expected true/false")
            return _BOOL_WORDS[raw.lower()]
        if isinstance(default, int):
            value = int(raw)
            if value < (0 if name in ZERO_ALLOWED else 1):
                raise ValueError("must not be negative" if name in ZERO_ALLOWED else "must be at least 1")
            return value
        if isinstance(default, float):
            value = float(raw)
            if name.startswith("qc_"):  # shares: 0 and 1 switch a threshold off
                if not 0 <= value <= 1:
                    raise ValueError("must be a share between 0 and 1")
                return value
            if name == "host_delay":  # 0 switches the delay off
                if value < 0:
                    raise ValueError("must not be negative")
                return value
            if value <= 0:
                raise ValueError("must be positive")
            if name == "near_duplicate_threshold" and value > 1:
                raise ValueError("must be at most 1")
            return value
        if isinstance(default, timedelta):
            amount = float(raw)
            if amount < 0:
                raise ValueError("must not be negative")
            return timedelta(seconds=amount) if env.endswith("_SECONDS") else timedelta(hours=amount)
        if name in ("data_dir", "taxonomy_path"):
            return Path(raw).expanduser()
        if name == "allowed_networks":
            parse_networks(raw)
            return raw
        return raw
    except ValueError as exc:
        raise SettingsError(f"{env}={raw!r}: {exc}") from None


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of a comma-separated CIDR list (a bare address is a network of one)."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def describe() -> list[tuple[str, str, str]]:
    """(environment variable, default, meaning) for every setting, for the README and `--help`."""
    rows = []
    for spec in fields(Settings):
        default = spec.default
        if isinstance(default, timedelta):
            seconds = default.total_seconds()
            shown = str(seconds if spec.metadata["env"].endswith("_SECONDS") else seconds / 3600).removesuffix(".0")
        elif isinstance(default, Path):
            inside = default.is_relative_to(PROJECT_ROOT)
            shown = f"./{default.relative_to(PROJECT_ROOT)}" if inside else str(default)
        elif default is None:
            shown = "(empty)"
        else:
            shown = str(default)
        rows.append((spec.metadata["env"], shown, spec.metadata["doc"]))
    return rows

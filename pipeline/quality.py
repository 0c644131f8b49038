"""Data-quality gates: SQL checks over what one run did, with warn and fail thresholds from the settings."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Connection, text

from pipeline.settings import Settings

LOGGER = logging.getLogger(__name__)

# the items a run extracted (or failed to), found through feed_entries.last_run_id
_PROCESSED = "FROM feed_entries WHERE last_run_id = :run_id AND status IN ('loaded', 'duplicate', 'extract_failed')"
# the articles a run inserted or changed: its entries that became articles
_LOADED = ("FROM feed_entries AS e JOIN articles AS a ON a.id = e.article_id "
           "WHERE e.last_run_id = :run_id AND e.status = 'loaded'")
FUTURE_TOLERANCE = "1 hour"  # clock skew between an outlet and us; a time-zone mistake is hours


@dataclass(frozen=True)
class Check:
    """One gate: a query giving (hits, total) for a run, and which side of the thresholds is a breach."""

    name: str
    counts: str  # what hits/total count, in the reader's words
    sql: str
    breach: Literal["above", "below"] = "above"


CHECKS: tuple[Check, ...] = (
    Check("empty_bodies", "processed feed items whose page gave no article text",
          f"SELECT count(*) FILTER (WHERE status = 'extract_failed'), count(*) {_PROCESSED}"),
    Check("missing_dates", "loaded articles without a publication time",
          f"SELECT count(*) FILTER (WHERE a.published_at IS NULL), count(*) {_LOADED}"),
    Check("future_dates", f"loaded articles published more than {FUTURE_TOLERANCE} after they were stored",
          f"SELECT count(*) FILTER (WHERE a.published_at > a.updated_at + interval '{FUTURE_TOLERANCE}'), "
          f"count(*) {_LOADED}"),
    Check("duplicate_ratio", "extracted feed items that duplicated a stored article",
          f"SELECT count(*) FILTER (WHERE status = 'duplicate'), count(*) FILTER (WHERE status <> 'extract_failed') "
          f"{_PROCESSED}"),
    Check("failed_feeds", "feed polls that failed",
          "SELECT count(*) FILTER (WHERE status = 'failed'), count(*) FROM feed_fetches WHERE run_id = :run_id"),
    Check("topic_coverage", "loaded articles with at least one topic",
          "SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM article_topics AS at WHERE at.article_id = a.id)), "
          f"count(*) {_LOADED}", breach="below"),
)
CHECK_NAMES = tuple(check.name for check in CHECKS)
_BY_NAME = {check.name: check for check in CHECKS}


class QualityGateError(RuntimeError):
    """A check breached its fail threshold; the message names the check, the value and the threshold."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: Literal["passed", "warned", "failed"]
    value: float | None  # hits / total; None when there was nothing to check
    hits: int
    total: int
    warn_threshold: float
    fail_threshold: float
    message: str


def thresholds(settings: Settings, name: str) -> tuple[float, float]:
    """(warn, fail) thresholds of a check, from NEWS_QC_<NAME>_WARN / _FAIL."""
    return getattr(settings, f"qc_{name}_warn"), getattr(settings, f"qc_{name}_fail")


def judge(check: Check, hits: int, total: int, warn_at: float, fail_at: float, min_rows: int) -> CheckResult:
    """Compare a check's share with its thresholds; a breach on fewer than `min_rows` rows only warns."""
    env = f"NEWS_QC_{check.name.upper()}"
    if total == 0:
        return CheckResult(check.name, "passed", None, 0, 0, warn_at, fail_at,
                           f"quality check {check.name} passed: nothing to check (no {check.counts})")
    value = hits / total
    word = "above" if check.breach == "above" else "below"

    def breached(threshold: float) -> bool:
        return value > threshold if check.breach == "above" else value < threshold

    shown = f"{value:.4f} ({hits} of {total} {check.counts})"
    if breached(fail_at):
        if total >= min_rows:
            return CheckResult(check.name, "failed", value, hits, total, warn_at, fail_at,
                               f"quality check {check.name} failed: {shown} is {word} the fail threshold "
                               f"{fail_at:g} ({env}_FAIL)")
        return CheckResult(check.name, "warned", value, hits, total, warn_at, fail_at,
                           f"quality check {check.name} warned: {shown} is {word} the fail threshold {fail_at:g} "
                           f"({env}_FAIL), but {total} rows are fewer than NEWS_QC_MIN_ROWS={min_rows}")
    if breached(warn_at):
        return CheckResult(check.name, "warned", value, hits, total, warn_at, fail_at,
                           f"quality check {check.name} warned: {shown} is {word} the warn threshold "
                           f"{warn_at:g} ({env}_WARN)")
    return CheckResult(check.name, "passed", value, hits, total, warn_at, fail_at,
                       f"quality check {check.name} passed: {shown}, warn {word} {warn_at:g}, fail {word} {fail_at:g}")


def run_check(conn: Connection, settings: Settings, run_id: int, name: str) -> CheckResult:
    """Measure one check over a run, record it in quality_checks and the run's quality_status, and log it.

    Does not raise on a breach: the caller decides (`raise_on_failure`)."""
    check = _BY_NAME[name]
    started = time.perf_counter()
    hits, total = conn.execute(text(check.sql), {"run_id": run_id}).one()
    warn_at, fail_at = thresholds(settings, name)
    result = judge(check, int(hits), int(total), warn_at, fail_at, settings.qc_min_rows)
    # the run row is locked first, so checks finishing together each see the others' committed rows
    conn.execute(text("SELECT id FROM ingest_runs WHERE id = :run_id FOR UPDATE"), {"run_id": run_id})
    conn.execute(text(
        "INSERT INTO quality_checks (run_id, check_name, outcome, value, hits, total, warn_threshold, "
        "  fail_threshold, message) "
        "VALUES (:run_id, :name, :outcome, :value, :hits, :total, :warn, :fail, :message) "
        "ON CONFLICT (run_id, check_name) DO UPDATE SET outcome = excluded.outcome, value = excluded.value, "
        "  hits = excluded.hits, total = excluded.total, warn_threshold = excluded.warn_threshold, "
        "  fail_threshold = excluded.fail_threshold, message = excluded.message, checked_at = now()"
    ), {"run_id": run_id, "name": name, "outcome": result.outcome, "value": result.value, "hits": result.hits,
        "total": result.total, "warn": warn_at, "fail": fail_at, "message": result.message})
    conn.execute(text(
        "UPDATE ingest_runs SET quality_checked_at = now(), quality_seconds = quality_seconds + :seconds, "
        "  quality_status = (SELECT CASE WHEN bool_or(outcome = 'failed') THEN 'failed' "
        "                                WHEN bool_or(outcome = 'warned') THEN 'warned' ELSE 'passed' END "
        "                    FROM quality_checks WHERE run_id = :run_id) "
        "WHERE id = :run_id"
    ), {"run_id": run_id, "seconds": time.perf_counter() - started})
    level = {"passed": logging.INFO, "warned": logging.WARNING, "failed": logging.ERROR}[result.outcome]
    LOGGER.log(level, "quality: run %s: %s", run_id, result.message)
    return result


def raise_on_failure(result: CheckResult) -> CheckResult:
    if result.outcome == "failed":
        raise QualityGateError(result.message)
    return result


def run_checks(conn: Connection, settings: Settings, run_id: int) -> list[CheckResult]:
    """Every check over one run (the CLI's way; the DAG runs one task per check)."""
    return [run_check(conn, settings, run_id, name) for name in CHECK_NAMES]

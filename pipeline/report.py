"""The analyst report: topic counts per day, top stories and feed health as tables, and a daily-volume chart."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

LOGGER = logging.getLogger(__name__)

AGGREGATES = ("topic_daily_counts",)  # materialised views the news_aggregates DAG refreshes


class UnknownTopicError(ValueError):
    """--topic named no topic; the message lists the known ones."""


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    topic: str | None  # the label asked for, if any
    days: list[date]
    counts: dict[str, dict[date, int]]  # topic label -> day -> articles
    stories: list[Any] = field(default_factory=list)  # rows of the `stories` view with their topics
    feeds: list[Any] = field(default_factory=list)  # rows of the `feed_health` view


def refresh_aggregates(conn: Connection) -> list[str]:
    """Recompute the materialised analyst aggregates without blocking their readers; returns their names."""
    for view in AGGREGATES:
        conn.execute(text(f"REFRESH MATERIALIZED VIEW CONCURRENTLY {view}"))
    LOGGER.info("refreshed %s", ", ".join(AGGREGATES))
    return list(AGGREGATES)


def resolve_topic(conn: Connection, topic: str) -> tuple[str, str]:
    """(id, label) of a topic named by id or label, any case."""
    row = conn.execute(text(
        "SELECT id, label FROM topics WHERE lower(id) = lower(:topic) OR lower(label) = lower(:topic)"
    ), {"topic": topic.strip()}).first()
    if row is None:
        known = [r.label for r in conn.execute(text("SELECT label FROM topics ORDER BY label"))]
        raise UnknownTopicError(f"no topic {topic!r}; known topics: {', '.join(known) or '(none yet)'}")
    return row.id, row.label


def build_report(conn: Connection, since: datetime, until: datetime, topic: str | None = None,
                 top: int = 10) -> Report:
    """Read the report's figures for publication times in [since, until) from the analyst views."""
    conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))  # days and times in the tables are UTC
    topic_id = label = None
    if topic:
        topic_id, label = resolve_topic(conn, topic)
    first_day = since.date()
    last_day = (until - timedelta(microseconds=1)).date()
    days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    counts: dict[str, dict[date, int]] = {}
    for row in conn.execute(text(
        "SELECT day, topic, articles FROM topic_daily_counts "
        "WHERE day BETWEEN :first AND :last AND (CAST(:topic AS text) IS NULL OR topic_id = :topic) "
        "ORDER BY topic, day"
    ), {"first": first_day, "last": last_day, "topic": topic_id}):
        counts.setdefault(row.topic, {})[row.day] = row.articles
    if label and label not in counts:
        counts[label] = {}
    stories = conn.execute(text(
        "SELECT s.story_id, s.title, s.representative_source, s.published_at, s.copies, s.outlet_count, "
        "  ARRAY(SELECT DISTINCT t.label FROM articles AS a JOIN article_topics AS at ON at.article_id = a.id "
        "        JOIN topics AS t ON t.id = at.topic_id WHERE a.cluster_id = s.story_id ORDER BY 1) AS topics "
        "FROM stories AS s "
        "WHERE s.published_at >= :since AND s.published_at < :until AND (CAST(:topic AS text) IS NULL OR EXISTS ("
        "  SELECT 1 FROM articles AS a JOIN article_topics AS at ON at.article_id = a.id "
        "  WHERE a.cluster_id = s.story_id AND at.topic_id = :topic)) "
        "ORDER BY s.copies DESC, s.outlet_count DESC, s.published_at DESC, s.story_id LIMIT :top"
    ), {"since": since, "until": until, "topic": topic_id, "top": top}).all()
    feeds = conn.execute(text(
        "SELECT source, url, health, last_status, failure_streak, items_per_day, median_latency_ms, "
        "  last_success_at, coalesce(disabled_reason, last_error) AS note "
        "FROM feed_health ORDER BY health = 'ok', source, url"
    )).all()
    return Report(since, until, label, days, counts, list(stories), list(feeds))


def render_text(report: Report) -> str:
    """The report as terminal tables."""
    scope = f" on {report.topic}" if report.topic else ""
    parts = [f"news report{scope}: published {report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC", "",
             "articles per topic and day (UTC):"]
    headers = ["topic", *(f"{day:%m-%d}" for day in report.days), "total"]
    rows: list[list[object]] = []
    for label, per_day in sorted(report.counts.items(), key=lambda item: (-sum(item[1].values()), item[0])):
        rows.append([label, *(per_day.get(day, 0) or "." for day in report.days), sum(per_day.values())])
    parts.append(table(headers, rows) if rows else "  (no tagged articles in this window)")
    parts += ["", "top stories (most copies first):"]
    story_rows = [[s.copies, s.outlet_count, f"{s.published_at:%Y-%m-%d %H:%M}" if s.published_at else "",
                   s.representative_source, _cut(s.title or "", 60), _cut(", ".join(s.topics), 40)]
                  for s in report.stories]
    parts.append(table(["copies", "outlets", "published", "source", "title", "topics"], story_rows)
                 if story_rows else "  (no stories in this window)")
    parts += ["", "feed health:"]
    feed_rows = [[f.source, f.health, f.last_status or "", f.failure_streak,
                  "" if f.items_per_day is None else f"{f.items_per_day:g}",
                  "" if f.median_latency_ms is None else f"{f.median_latency_ms:.0f}",
                  f"{f.last_success_at:%Y-%m-%d %H:%M}" if f.last_success_at else "never", _cut(f.url, 50),
                  _cut(f.note or "", 50)] for f in report.feeds]
    parts.append(table(["source", "health", "last poll", "fail streak", "items/day", "median ms", "last success",
                        "url", "reason / last error"], feed_rows) if feed_rows else "  (no feeds registered)")
    return "\n".join(parts)


def render_chart(report: Report, path: Path) -> Path:
    """A PNG line chart of articles per topic and day (matplotlib's Agg backend: no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, per_day in sorted(report.counts.items(), key=lambda item: -sum(item[1].values())):
        axes.plot(report.days, [per_day.get(day, 0) for day in report.days], marker="o", label=label)
    scope = f" ({report.topic})" if report.topic else ""
    axes.set_title(f"Articles per topic and day{scope}, {report.days[0]:%Y-%m-%d} to {report.days[-1]:%Y-%m-%d}")
    axes.set_ylabel("articles")
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    locator = AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.grid(True, alpha=0.3)
    if report.counts:
        figure.legend(loc="outside right upper", fontsize="small", frameon=False)  # beside the lines, not over them
    else:
        axes.text(0.5, 0.5, "no tagged articles in this window", transform=axes.transAxes, ha="center")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cut(value: str, width: int) -> str:
    return value if len(value) <= width else value[:width - 1] + "…"

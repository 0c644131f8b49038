"""`python -m pipeline report` on a real PostgreSQL after a demo week: its tables agree with the database, the
topic filter narrows them, and the chart is a real PNG drawn without a display."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import Engine, text

from pipeline import demosite, flow, report
from pipeline.cli import main
from pipeline.settings import Settings

WEEK = ["--since", "2026-11-02", "--until", "2026-11-09"]


@pytest.fixture
def demo_week(engine: Engine, settings: Settings, demo_base_url: str, database_url: str,
              monkeypatch: pytest.MonkeyPatch) -> Engine:
    with engine.begin() as conn:
        demosite.register_feeds(conn, demosite.load_site(), demo_base_url, include_broken=True)
    flow.run_interval(engine, settings, since=datetime(2026, 11, 2, tzinfo=UTC),
                      until=datetime(2026, 11, 9, tzinfo=UTC), run_key="week")
    monkeypatch.setenv("NEWS_DATABASE_URL", database_url)
    return engine


def _topic_totals(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT t.label, count(*) FROM article_topics at JOIN topics t ON t.id = at.topic_id "
            "JOIN articles a ON a.id = at.article_id "
            "WHERE a.published_at >= '2026-11-02' AND a.published_at < '2026-11-09' GROUP BY t.label")).all())


def test_report_help() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0


def test_report_prints_counts_per_topic_and_day_top_stories_and_feed_health_and_draws_a_png(
    demo_week: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_base_url: str
) -> None:
    chart = tmp_path / "charts" / "week.png"
    assert main(["report", *WEEK, "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    counts, stories, feeds = re.split(r"\n(?=top stories|feed health)", out.split("\n\n", 1)[1])
    header = counts.splitlines()[1].split()
    assert header == ["topic", *(f"11-{day:02d}" for day in range(2, 9)), "total"]
    totals = {" ".join(line.split()[:-8]): int(line.split()[-1]) for line in counts.splitlines()[3:] if line}
    assert totals == _topic_totals(demo_week)  # the aggregates were refreshed before reading
    story_lines = stories.strip().splitlines()[3:]
    assert len(story_lines) == 10
    copies = [int(line.split()[0]) for line in story_lines]
    assert copies == sorted(copies, reverse=True) and copies[0] > 1
    feed_lines = feeds.strip().split("\n\n")[0].splitlines()[3:]
    assert len(feed_lines) == 10
    assert "failing" in feed_lines[0] and "HTTP 500" in feed_lines[0]  # those needing attention first
    assert out.rstrip().endswith(f"chart: {chart}")
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size == (1000, 500)
        assert len(image.convert("RGB").getcolors(maxcolors=100_000) or []) > 20  # lines, not a blank canvas


def test_report_on_one_topic_narrows_counts_stories_and_chart(
    demo_week: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", *WEEK, "--topic", "dprk SANCTIONS", "--top", "3", "--no-chart"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("news report on DPRK sanctions: published 2026-11-02 00:00 to 2026-11-09 00:00 UTC")
    counts = out.split("top stories")[0].strip().splitlines()
    rows = counts[5:]
    assert len(rows) == 1 and rows[0].startswith("DPRK sanctions")
    assert int(rows[0].split()[-1]) == _topic_totals(demo_week)["DPRK sanctions"]
    stories = out.split("top stories (most copies first):\n")[1].split("\n\nfeed health")[0].splitlines()[2:]
    assert len(stories) == 3 and all("DPRK sanctions" in line for line in stories)
    assert not (tmp_path / "topic-volume.png").exists()


def test_an_unknown_topic_is_one_line_naming_the_known_ones(
    demo_week: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", *WEEK, "--topic", "weather", "--no-chart"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no topic 'weather'; known topics: ") and "DPRK sanctions" in err
    assert "\n" not in err


def test_an_empty_window_still_gives_tables_and_a_chart(engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:
        figures = report.build_report(conn, datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 3, tzinfo=UTC))
    assert figures.days == [datetime(2030, 1, 1).date(), datetime(2030, 1, 2).date()]
    rendered = report.render_text(figures)
    assert "(no tagged articles in this window)" in rendered and "(no stories in this window)" in rendered
    with Image.open(report.render_chart(figures, tmp_path / "empty.png")) as image:
        assert image.size == (1000, 500)

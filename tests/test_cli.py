"""The command line on a real database and the demo site: every command answers --help, errors are one
line with a non-zero exit, and the commands do what they say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import demosite
from pipeline.cli import main
from pipeline.settings import PROJECT_ROOT
from tests.conftest import set_loopback_env

COMMANDS = [[], ["db"], ["db", "migrate"], ["db", "url"], ["db", "psql"], ["db", "stop"], ["feeds"],
            ["feeds", "add"], ["feeds", "import"], ["feeds", "list"], ["feeds", "enable"], ["feeds", "disable"],
            ["run"], ["backfill"], ["archive"], ["archive", "usage"], ["archive", "prune"], ["extract"], ["summary"],
            ["settings"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m pipeline" in capsys.readouterr().out


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, database_url: str) -> None:
    monkeypatch.setenv("NEWS_DATABASE_URL", database_url)
    monkeypatch.setenv("NEWS_WORKERS", "1")
    set_loopback_env(monkeypatch)


def test_feeds_import_list_run_and_summary(cli_env: None, demo_base_url: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    site = demosite.load_site()
    outlines = "".join(
        f'<outline text="{site.outlets[f.outlet].name}"><outline type="rss" text="{f.title}" '
        f'xmlUrl="{demo_base_url}{f.path}"/></outline>' for f in site.feeds if not f.broken)
    opml = tmp_path / "demo.opml"
    opml.write_text(f'<?xml version="1.0"?><opml version="2.0"><body>{outlines}</body></opml>', encoding="utf-8")

    assert main(["feeds", "import", str(opml)]) == 0
    assert "imported 7 feeds" in capsys.readouterr().out
    assert main(["feeds", "import", str(opml)]) == 0
    assert "(0 new)" in capsys.readouterr().out
    assert main(["run", "--since", "2026-11-02", "--until", "2026-11-09"]) == 0
    assert "52 articles loaded" in capsys.readouterr().out  # each outlet's copy of a story is a row
    assert main(["feeds", "list"]) == 0
    listing = capsys.readouterr().out
    assert "Meridian Wire" in listing and listing.count(" ok ") == 7
    assert main(["summary"]) == 0
    summary = capsys.readouterr().out
    assert "articles stored:          52" in summary and "DPRK sanctions" in summary
    assert "stories:                  45 " in summary
    assert main(["feeds", "disable", f"{demo_base_url}{site.feeds[0].path}", "--reason", "moved to Atom"]) == 0
    assert main(["feeds", "list"]) == 0
    listing = capsys.readouterr().out
    assert listing.count(" disabled ") == 1 and listing.count(" ok ") == 6 and "(moved to Atom)" in listing


def test_errors_are_one_line_with_a_non_zero_exit(cli_env: None, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["feeds", "add", "ftp://example.invalid/feed"], "not an http(s) URL"),
        (["feeds", "import", str(tmp_path / "missing.opml")], "cannot read"),
        (["feeds", "disable", "https://example.invalid/never-added"], "no feed registered"),
        (["run", "--since", "2026-11-09", "--until", "2026-11-02"], "is not before"),
        (["extract", str(tmp_path / "missing.html")], "cannot read"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_extract_shows_what_would_be_stored_with_topic_evidence(tmp_path: Path) -> None:
    page = demosite.render_page(
        "hrh", title="Seoul widens sanctions list over North Korean oil smuggling", author="Ko Eun-bi",
        published_at=demosite.load_site().articles[0].published_at, canonical_url="https://hrh.example/a1",
        paragraphs=["South Korea added six ships and two Pyongyang trading firms to its sanctions list on Monday, "
                    "accusing them of ship-to-ship transfers of refined petroleum to North Korea.",
                    "The ministry said the measures complement United Nations Security Council sanctions and "
                    "that asset freezes take effect at once for the named firms and their North Korean partners."])
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pipeline", "extract", str(path), "--url",
                           "https://hrh.example/a1?utm_source=x", "--json"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["canonical_url"] == "https://hrh.example/a1" and report["author"] == "Ko Eun-bi"
    assert report["body"].startswith("South Korea added six ships")
    sanctions = next(t for t in report["topics"] if t["label"] == "DPRK sanctions")
    assert sanctions["matched"] and sanctions["terms"]
    text = subprocess.run([sys.executable, "-m", "pipeline", "extract", str(path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=False).stdout
    assert "+ DPRK sanctions" in text and "- THAAD deployment" in text

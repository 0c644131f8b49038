"""A whole pass, through the real command line, over feeds and pages served by the hostile web of
tests/hostile.py: every case ends as its recorded outcome, the run completes, the good articles load, no
request reaches a refused address (asserted from that server's side) and the peak memory stays bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy import Engine, text

from pipeline import store
from pipeline.settings import PROJECT_ROOT
from tests import hostile
from tests.loopback import respond, serve

SINCE, UNTIL = "2026-11-02", "2026-11-09"
PUBLISHED = format_datetime(datetime(2026, 11, 5, 9, 30, tzinfo=UTC))
PEAK_RSS_LIMIT_MB = 300
# four page threads may each hold a body near the 10 MiB cap twice (chunks, then joined): 80 MiB at worst
HOSTILE_RSS_MARGIN_MB = 100
MAX_BYTES = 10 * 1024 * 1024  # the default cap

# `python -m pipeline ARGS`, then the process's peak resident memory (VmHWM, kB) written to a file
CLI_WITH_PEAK = """
import sys
from pipeline.cli import main
code = main(sys.argv[2:])
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
with open(sys.argv[1], "w") as out:
    out.write(peak)
sys.exit(code)
"""

# feed path -> (feed_fetches status, error text it starts with or None)
FEED_OUTCOMES = {
    "/feeds/pages.xml": ("ok", None),
    "/feeds/good.xml": ("ok", None),
    "/feeds/ten-thousand.xml": ("ok", None),
    "/feeds/laughs.xml": ("failed", "refused: the document declares XML entities"),
    "/feeds/mislabelled.xml": ("ok", None),
    "/feeds/invalid-utf8.xml": ("ok", None),
    "/feeds/binary.xml": ("failed", "binary content (PNG) served as application/rss+xml"),
    "/feeds/404.xml": ("failed", "HTTP 404"),
    "/feeds/410.xml": ("failed", "HTTP 410"),
    "/feeds/500.xml": ("failed", "HTTP 500"),
    "/feeds/429.xml": ("failed", "HTTP 429"),
    "/feeds/slow-drip.xml": ("failed", "took longer than 2 s"),
}
# page path -> (feed_entries status, error text it starts with or None, retryable)
PAGE_OUTCOMES = {
    "/pages/good-1": ("loaded", None, False),
    "/pages/good-2": ("loaded", None, False),
    "/pages/good-3": ("loaded", None, False),
    "/pages/slow-drip": ("page_failed", "took longer than 2 s", True),
    "/pages/endless": ("page_failed", f"body too large: over {MAX_BYTES} bytes", False),
    "/pages/50mb": ("page_failed", f"body too large: over {MAX_BYTES} bytes", False),
    "/pages/gzip-bomb": ("page_failed", f"body too large: over {MAX_BYTES} bytes", False),
    "/pages/deflate-bomb": ("page_failed", f"body too large: over {MAX_BYTES} bytes", False),
    "/pages/brotli": ("page_failed", "content encoding 'br' was not offered (Accept-Encoding: gzip, deflate)",
                      False),
    "/pages/redirect-loop": ("page_failed", "more than 5 redirects", False),
    "/pages/to-metadata": ("page_failed", "address 169.254.169.254 of host '169.254.169.254' is a cloud metadata "
                           "address", False),
    "/pages/to-loopback": ("page_failed", "address 127.0.0.1 of host '127.0.0.1' is not public", False),
    "/pages/invalid-utf8": ("loaded", None, False),
    "/pages/mislabelled": ("loaded", None, False),
    "/pages/nested": ("extract_failed", "no article text found", False),
    "/pages/binary": ("page_failed", "binary content (PDF) served as text/html", False),
    "/pages/404": ("page_failed", "HTTP 404", False),
    "/pages/410": ("page_failed", "HTTP 410", False),
    "/pages/500": ("page_failed", "HTTP 500", True),
    "/pages/429": ("page_failed", "HTTP 429", True),
}


def _run_cli(database_url: str, data_dir: Path, run_key: str) -> tuple[int, float, float, str]:
    """`python -m pipeline run` in a process of its own; returns its exit status, peak RSS in MB (its VmHWM as
    it ends: ru_maxrss of a child would also count the forking pytest process, whose pages exec inherits),
    wall seconds and stderr."""
    env = {**os.environ, "NEWS_DATABASE_URL": database_url, "NEWS_DATA_DIR": str(data_dir),
           "NEWS_ALLOW_PRIVATE_ADDRESSES": "false", "NEWS_ALLOWED_NETWORKS": "127.0.0.2/32", "NEWS_WORKERS": "1",
           "NEWS_CONNECT_TIMEOUT": "1", "NEWS_READ_TIMEOUT": "1", "NEWS_TOTAL_TIMEOUT": "2",
           # one loopback host serves every case: no delay between requests, as many at once as page threads
           "NEWS_HOST_DELAY": "0", "NEWS_HOST_CONCURRENCY": "4"}
    env.pop("NEWS_MAX_BYTES", None)
    started = time.monotonic()
    with open(data_dir / "stderr.txt", "w+b") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", CLI_WITH_PEAK, str(data_dir / "peak_kb"), "run", "--since", SINCE, "--until",
             UNTIL, "--run-key", run_key],
            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr, timeout=300, check=False)
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    peak_kb = int((data_dir / "peak_kb").read_text()) if done.returncode == 0 else 0
    return done.returncode, peak_kb / 1024, time.monotonic() - started, errors


def test_a_whole_pass_over_the_hostile_web_records_every_case_and_stays_bounded(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    # the same command with no feed registered: the interpreter, its imports and a run's fixed work
    idle_code, idle_mb, _seconds, idle_errors = _run_cli(database_url, tmp_path, "idle")
    assert idle_code == 0, idle_errors[-3000:]
    with serve({"/admin": respond(200, b"<p>internal</p>")}) as private, \
            serve({}, keep_alive=True, host="127.0.0.2") as site:
        site.routes.update(hostile.routes(site.base_url, private.base_url, PUBLISHED))
        with engine.begin() as conn:
            source_id = store.upsert_source(conn, "Hostile Web")
            for path in FEED_OUTCOMES:
                store.upsert_feed(conn, f"{site.base_url}{path}", source_id)
            store.upsert_feed(conn, f"{private.base_url}/admin", source_id)  # a feed typed in pointing inside
        code, peak_mb, seconds, errors = _run_cli(database_url, tmp_path, "hostile")
        private_hits = list(private.hits)
    print(f"hostile pass: {seconds:.1f} s, peak RSS of the pass process {peak_mb:.0f} MB "
          f"(with no feed: {idle_mb:.0f} MB)")
    assert code == 0, errors[-3000:]
    assert private_hits == []  # from the private server's side: not one request, directly or by redirect
    assert peak_mb < PEAK_RSS_LIMIT_MB
    assert peak_mb < idle_mb + HOSTILE_RSS_MARGIN_MB  # the hostile cases add little over start-up

    with engine.begin() as conn:
        run = conn.execute(text("SELECT status, loaded FROM ingest_runs WHERE run_key = 'hostile'")).one()
        polls = {row.url.removeprefix(site.base_url): row for row in conn.execute(text(
            "SELECT f.url, ff.status, ff.error, ff.items, f.enabled, f.disabled_reason FROM feed_fetches ff "
            "JOIN feeds f ON f.id = ff.feed_id"))}
        entries = {row.url.removeprefix(site.base_url): row for row in conn.execute(text(
            "SELECT url, status, error, retryable, title FROM feed_entries"))}
        bodies = dict(conn.execute(text("SELECT url, body FROM articles")).all())
    assert run.status == "success" and run.loaded == 5
    inside = polls.pop(f"{private.base_url}/admin")
    assert inside.status == "failed" and inside.error.startswith("address 127.0.0.1 of host '127.0.0.1' is not public")
    assert {path: (row.status, row.error and row.error[:len(FEED_OUTCOMES[path][1] or "")])
            for path, row in polls.items()} == FEED_OUTCOMES
    assert polls["/feeds/ten-thousand.xml"].items == 10_000
    assert not polls["/feeds/410.xml"].enabled and "410 Gone" in polls["/feeds/410.xml"].disabled_reason
    assert all(row.enabled for path, row in polls.items() if path != "/feeds/410.xml")
    pages = {path: (row.status, row.error and row.error[:len(PAGE_OUTCOMES[path][1] or "")], row.retryable)
             for path, row in entries.items() if path.startswith("/pages/")}
    assert pages == PAGE_OUTCOMES
    titles = {row.title for row in entries.values() if "umlaut.example" in row.url}
    assert titles == {"Pjöngjang-Außenminister-mislabelled", "Pjöngjang-Außen\ufffdminister-invalid"}
    invalid, mislabelled = bodies[f"{site.base_url}/pages/invalid-utf8"], bodies[f"{site.base_url}/pages/mislabelled"]
    assert invalid.startswith("Der Außenminister sa\ufffdgte in Pjöngjang") and "Ã" not in invalid
    assert mislabelled.startswith("Der Außenminister sagte in Pjöngjang") and "Ã" not in mislabelled
    assert sum(path == "/pages/redirect-loop" for path in (hit.split("?")[0] for hit in site.hits)) == 6

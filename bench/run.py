"""`make bench`: end-to-end throughput against extraction alone, per-stage times, AEB extraction quality,
and news-please side by side, all measured in one run so the ratios hold on a noisy machine."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import aeb  # noqa: E402
import dedup_bench  # noqa: E402
import scratch_db  # noqa: E402
import search_bench  # noqa: E402
import topics_bench  # noqa: E402
from sqlalchemy import text  # noqa: E402

from pipeline import db, demosite, flow, store  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

LOGGER = logging.getLogger("bench")
RESULTS_DIR = REPO_ROOT / "bench" / "results"
NEWSPLEASE_PYTHON = REPO_ROOT / ".venv-newsplease" / "bin" / "python"
OPTIONAL_PARTS = ("topics", "dedup", "search")
FEEDS_PER_CORPUS = 4
WINDOW_START = datetime(2026, 1, 5, tzinfo=UTC)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- pages served on loopback

@contextmanager
def serve_pages(pages: Sequence[aeb.AebPage]) -> Iterator[tuple[str, list[str]]]:
    """Serve the corpus pages and RSS feeds listing them from a separate process on loopback (as a remote
    site would be: its CPU is not ours), gzip-compressed as news sites serve them; yields (base URL, feed
    URLs)."""
    with tempfile.TemporaryDirectory(prefix="news-bench-site-") as root:
        (Path(root) / "aeb").mkdir()
        for page in pages:
            (Path(root) / "aeb" / f"{page.id}.html").write_bytes(page.html)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        feed_urls = []
        for index in range(FEEDS_PER_CORPUS):
            items = []
            for position, page in enumerate(pages[index::FEEDS_PER_CORPUS]):
                published = WINDOW_START + timedelta(minutes=7 * (position * FEEDS_PER_CORPUS + index))
                items.append(f"<item><link>{base}/aeb/{page.id}.html</link><guid>aeb-{page.id}</guid>"
                             f"<pubDate>{format_datetime(published)}</pubDate></item>")
            (Path(root) / "aeb" / f"feed-{index}.xml").write_text(
                '<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>AEB pages</title>'
                f"<link>{base}/</link><description>bench</description>{''.join(items)}</channel></rss>",
                encoding="utf-8")
            feed_urls.append(f"{base}/aeb/feed-{index}.xml")
        server = subprocess.Popen([sys.executable, str(REPO_ROOT / "bench" / "page_server.py"), "--root", root,
                                   "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(port)
            yield base, feed_urls
        finally:
            server.terminate()
            server.wait(timeout=10)


@contextmanager
def serve_demo_site() -> Iterator[str]:
    """The demo site from a separate process (served from a thread of ours, it would compete with the
    fetching threads for the interpreter lock); yields its base URL."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline.demosite", "--port", str(port)], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the page server did not open port {port}")


# ---------------------------------------------------------------- databases

# ---------------------------------------------------------------- measurements

def _extract_chunk(chunk: list[tuple[bytes, str]]) -> int:
    return sum(1 for html, url in chunk if extract(html, url).ok)


def extraction_only(pages: Sequence[tuple[bytes, str]], workers: int) -> dict[str, float]:
    """Our extraction call alone over in-memory pages, on `workers` processes: the rate to compare with."""
    # chunks of the pipeline's hand-over size: of 1, 5 and 25 pages per task, 5 measured fastest here
    chunks = [list(pages[i:i + flow.HANDOVER_CHUNK]) for i in range(0, len(pages), flow.HANDOVER_CHUNK)]
    started = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            extracted = sum(pool.map(_extract_chunk, chunks))
    else:
        extracted = sum(_extract_chunk(chunk) for chunk in chunks)
    seconds = time.perf_counter() - started
    return {"pages": len(pages), "extracted": extracted, "seconds": seconds, "pages_per_s": len(pages) / seconds}


def fresh_database(databases: scratch_db.Databases, feed_urls: Sequence[tuple[str, str]], workers: int
                   ) -> tuple[str, Any, Settings]:
    """A fresh database with these (source, feed URL) pairs registered: its URL, engine and settings."""
    url = databases.fresh()
    engine = db.engine_for(url)
    with engine.begin() as conn:
        for source, feed_url in feed_urls:
            store.upsert_feed(conn, feed_url, store.upsert_source(conn, source))
    # every page comes from one loopback host: no delay between its requests and as many at once as page
    # threads, so the benchmark measures the pipeline, not the politeness towards real sites
    return url, engine, Settings(database_url=url, allow_private_addresses=True, workers=workers,
                                 data_dir=Path(tempfile.gettempdir()), host_delay=0.0,
                                 host_concurrency=Settings.page_concurrency)


def end_to_end(databases: scratch_db.Databases, feed_urls: Sequence[tuple[str, str]], since: datetime, until: datetime,
               workers: int) -> dict[str, Any]:
    """One full pass (poll, fetch, store, extract, dedupe, tag, load) into a fresh database."""
    url, engine, settings = fresh_database(databases, feed_urls, workers)
    started = time.perf_counter()
    _run_id, totals = flow.run_interval(engine, settings, since=since, until=until,
                                        run_key=f"bench-{uuid.uuid4().hex[:8]}")
    seconds = time.perf_counter() - started
    processed = totals.get("loaded", 0) + totals.get("duplicates", 0) + totals.get("extraction_failures", 0)
    databases.settle(url)
    return {"seconds": seconds, "pages": totals.get("pages_fetched", 0), "processed": processed,
            "articles_per_s": processed / seconds if seconds else 0.0, "totals": totals}


def replay_pass(engine: Any, settings: Settings, since: datetime, until: datetime, *, cold: bool) -> dict[str, Any]:
    """One replay of the interval's archived pages (no network). Warm: the articles are stored, as after a
    rule change (re-extract, compare, re-tag). Cold: the article tables are emptied first (outside the timing),
    so every page is extracted, deduplicated, tagged and inserted again."""
    if cold:
        with engine.begin() as conn:  # DELETE, not TRUNCATE: the entries and their archived pages stay
            conn.execute(text("DELETE FROM articles"))
            conn.execute(text("DELETE FROM story_clusters"))
            conn.execute(text("UPDATE feed_entries SET status = 'fetched', article_id = NULL"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))  # the deleted rows cleaned up before the timing, not during
    started = time.perf_counter()
    _run_id, totals = flow.run_interval(engine, settings, since=since, until=until, mode="replay",
                                        run_key=f"bench-replay-{uuid.uuid4().hex[:8]}")
    seconds = time.perf_counter() - started
    processed = totals.get("replayed", 0)
    return {"seconds": seconds, "pages": processed, "processed": processed,
            "articles_per_s": processed / seconds if seconds else 0.0, "totals": totals}


def measure_rounds(rounds: int, baseline: Callable[[], dict[str, Any]], candidate: Callable[[], dict[str, Any]]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Alternate baseline and candidate `rounds` times (so drift on a noisy machine hits both alike) and keep
    each one's median run by wall time."""
    baselines, candidates = [], []
    for _ in range(max(1, rounds)):
        baselines.append(baseline())
        candidates.append(candidate())

    def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(runs, key=lambda run: run["seconds"])
        chosen = dict(ordered[len(ordered) // 2])
        chosen["all_seconds"] = [round(run["seconds"], 3) for run in runs]
        return chosen

    candidate_median = median_run(candidates)
    # each round's ratio compares two runs made back to back; their median is the figure we report
    candidate_median["round_ratios"] = [round((c["processed"] / c["seconds"]) / b["pages_per_s"], 3)
                                        for b, c in zip(baselines, candidates, strict=True)]
    return median_run(baselines), candidate_median


def newsplease(pages: Sequence[aeb.AebPage]) -> dict[str, Any] | None:
    """news-please's from_html over the same pages, in its own virtualenv (see requirements-bench.txt)."""
    if not NEWSPLEASE_PYTHON.exists():
        log(f"  news-please skipped: {NEWSPLEASE_PYTHON} missing (make bench creates it)")
        return None
    with tempfile.TemporaryDirectory(prefix="news-bench-np-") as tmp:
        listing = []
        for page in pages:
            path = Path(tmp) / f"{page.id}.html.gz"
            path.write_bytes(gzip.compress(page.html, compresslevel=1))
            listing.append({"url": page.url, "path": path.name})
        (Path(tmp) / "pages.json").write_text(json.dumps(listing), encoding="utf-8")
        out = Path(tmp) / "out.json"
        subprocess.run([str(NEWSPLEASE_PYTHON), str(REPO_ROOT / "bench" / "newsplease_runner.py"),
                        "--pages", str(Path(tmp) / "pages.json"), "--out", str(out)],
                       check=True, capture_output=True, timeout=1800)
        return json.loads(out.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- report

def stage_table(result: dict[str, Any]) -> list[str]:
    totals, wall, pages = result["totals"], result["seconds"], max(1, result["processed"])
    rows = [("fetch (feeds + pages, wall)", totals.get("fetch_seconds", 0.0)),
            ("extract (CPU, all workers)", totals.get("extract_seconds", 0.0)),
            ("tag (CPU, all workers)", totals.get("tag_seconds", 0.0)),
            ("dedupe + load (all workers)", totals.get("load_seconds", 0.0))]
    lines = [f"    {name:<30} {seconds:8.2f} s  {seconds / pages * 1000:7.2f} ms/article" for name, seconds in rows]
    lines.append(f"    {'whole pass (wall)':<30} {wall:8.2f} s  {wall / pages * 1000:7.2f} ms/article")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", help="AEB directory (default ../shared/corpora/aeb or $NEWS_AEB_DIR)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="processes (default: all cores)")
    parser.add_argument("--limit", type=int, help="only the first N AEB pages (a quick look)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds (median kept)")
    parser.add_argument("--skip-newsplease", action="store_true", help="leave out the news-please comparison")
    parser.add_argument("--skip", nargs="*", default=[], choices=OPTIONAL_PARTS,
                        help="leave out these parts (topics: tagging quality and speed; dedup: near-duplicate "
                             "quality and cost with 100k and 1M stored signatures, about 4 minutes; search: "
                             "load cost of full-text search against extraction)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json", help="where to write the JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workers = max(1, args.workers)
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "workers": workers,
                               "cpu_count": os.cpu_count()}
    try:
        corpus = aeb.load_corpus(aeb.corpus_dir(args.corpus), limit=args.limit)
    except aeb.CorpusMissingError as exc:
        log(f"AEB parts skipped: {exc}")
        corpus = []

    databases = scratch_db.Databases()
    try:
        site = demosite.load_site()
        with serve_demo_site() as base:
            feeds = [(site.outlets[f.outlet].name, base + f.path) for f in site.feeds if not f.broken]
            demo_pages = [(site.render(a.path, base)[2], a.canonical_url(base)) for a in site.articles]
            log(f"demo site: {len(demo_pages)} pages, {args.rounds} rounds of extraction only / end to end ...")
            results["demo_extract"], results["demo_e2e"] = measure_rounds(
                args.rounds, lambda: extraction_only(demo_pages, workers),
                lambda: end_to_end(databases, feeds, datetime(2026, 11, 2, tzinfo=UTC),
                                   datetime(2026, 11, 9, tzinfo=UTC), workers))

        if corpus:
            since, until = WINDOW_START, WINDOW_START + timedelta(days=7)
            html_pages = [(page.html, page.url) for page in corpus]
            with serve_pages(corpus) as (_base, feed_urls):
                aeb_feeds = [("AEB", u) for u in feed_urls]
                log(f"AEB: {len(corpus)} pages, {args.rounds} rounds of extraction only / end to end ...")
                results["aeb_extract"], results["aeb_e2e"] = measure_rounds(
                    args.rounds, lambda: extraction_only(html_pages, workers),
                    lambda: end_to_end(databases, aeb_feeds, since, until, workers))
                log("AEB: end to end on one process (for the per-article comparison) ...")
                results["aeb_e2e_1worker"] = end_to_end(databases, aeb_feeds, since, until, 1)
                replay_url, replay_engine, replay_settings = fresh_database(databases, aeb_feeds, workers)
                flow.run_interval(replay_engine, replay_settings, since=since, until=until, run_key="bench-live")
            # replay needs no network: the page server is gone
            for kind in ("warm", "cold"):
                log(f"AEB: {args.rounds} rounds of extraction only / replay ({kind}) ...")
                results[f"aeb_replay_{kind}_extract"], results[f"aeb_replay_{kind}"] = measure_rounds(
                    args.rounds, lambda: extraction_only(html_pages, workers),
                    lambda kind=kind: replay_pass(replay_engine, replay_settings, since, until, cold=kind == "cold"))
            databases.settle(replay_url)
            log("AEB: extraction quality, ours against trafilatura.extract defaults ...")
            ours = aeb.evaluate(lambda html, url: extract(html, url).body, corpus)
            plain = aeb.evaluate(lambda html, url: __import__("trafilatura").extract(html), corpus)
            results["aeb_quality"] = {name: {k: v for k, v in r.items() if k != "per_page"}
                                      for name, r in (("ours", ours), ("trafilatura_defaults", plain))}
            if not args.skip_newsplease:
                log("AEB: news-please from_html side by side ...")
                results["newsplease"] = newsplease(corpus)
        if "topics" not in args.skip:
            log("topics: labelled set and tagging speed ...")
            results["topics"] = topics_bench.run_topics_bench()
        if "search" not in args.skip:
            log("search: load cost with and without full-text search ...")
            results["search"] = search_bench.run_search_bench(databases=databases, corpus=args.corpus,
                                                              limit=args.limit)
        if "dedup" not in args.skip:
            results["dedup"] = dedup_bench.run_dedup_bench(corpus=aeb.corpus_dir(args.corpus) if corpus else None,
                                                           limit=args.limit, databases=databases, progress=log)
    finally:
        databases.close()

    report = render(results)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    log(f"\nfigures written to {args.out}")
    return 0


def render(results: dict[str, Any]) -> str:
    lines = [f"news-ingest benchmark, {results['date']}, {results['workers']} worker processes, "
             f"{results['cpu_count']} cores", ""]
    for label, e2e_key, ext_key in (("demo site", "demo_e2e", "demo_extract"), ("AEB corpus", "aeb_e2e",
                                                                                  "aeb_extract")):
        if e2e_key not in results:
            continue
        e2e, ext = results[e2e_key], results[ext_key]
        ratio = statistics.median(e2e["round_ratios"])
        lines += [f"{label}: {e2e['processed']} pages",
                  f"  end to end        {e2e['articles_per_s']:8.1f} articles/s",
                  f"  extraction only   {ext['pages_per_s']:8.1f} pages/s (our trafilatura call, same pages)",
                  f"  ratio             {ratio:8.2f}  (median of the rounds' back-to-back ratios "
                  f"{e2e['round_ratios']}; target >= 0.80)",
                  "  per stage:", *stage_table(e2e), ""]
    for kind, meaning in (("warm", "articles stored: re-extract, compare, re-tag"),
                          ("cold", "article tables emptied: every page re-extracted, deduped, tagged, inserted")):
        replay, ext = results.get(f"aeb_replay_{kind}"), results.get(f"aeb_replay_{kind}_extract")
        if not replay:
            continue
        ratio = statistics.median(replay["round_ratios"])
        live = results["aeb_e2e"]["articles_per_s"]
        lines += [f"AEB replay, {kind} ({meaning}): {replay['processed']} archived pages, no network",
                  f"  replay            {replay['articles_per_s']:8.1f} articles/s "
                  f"({replay['articles_per_s'] / live:.2f}x live ingestion of the same pages)",
                  f"  extraction only   {ext['pages_per_s']:8.1f} pages/s",
                  f"  ratio             {ratio:8.2f}  (median of the rounds' back-to-back ratios "
                  f"{replay['round_ratios']}; target >= 0.90)",
                  "  per stage:", *stage_table(replay), ""]
    quality = results.get("aeb_quality")
    if quality:
        lines.append("AEB extraction quality (benchmark scoring: 4-token shingles; F1 of mean P and mean R):")
        for name, r in quality.items():
            lines.append(f"  {name:<22} P {r['precision']:.4f}  R {r['recall']:.4f}  F1 {r['f1']:.4f}  "
                         f"(mean per-page F1 {r['f1_mean']:.4f})")
        lines.append("")
    np_result, single = results.get("newsplease"), results.get("aeb_e2e_1worker")
    if np_result and single:
        ours_ms = single["seconds"] / max(1, single["processed"]) * 1000
        np_mean = np_result["seconds"] / max(1, np_result["pages"]) * 1000
        np_median = statistics.median(np_result["per_page_ms"])
        lines += ["Per article, one process: news-ingest end to end (HTTP, Postgres, extract, dedupe, tag, load) "
                  "against news-please from_html alone:",
                  f"  news-ingest       {ours_ms:8.1f} ms/article",
                  f"  news-please       {np_mean:8.1f} ms/article mean, {np_median:.1f} median "
                  f"({np_result.get('errors', 0)} errors)",
                  f"  news-ingest is {np_mean / ours_ms:.1f}x cheaper (target >= 5x)", ""]
    if "topics" in results:
        lines += [*topics_bench.render_topics_bench(results["topics"]), ""]
    if "search" in results:
        lines += [*search_bench.render_search_bench(results["search"]), ""]
    if "dedup" in results:
        lines += [*dedup_bench.render_dedup_bench(results["dedup"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

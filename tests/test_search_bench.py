"""bench/search_bench.py as bench/run.py will call it: a short real measurement on AEB pages (skipped without
../shared), loading the same articles with and without full-text search into fresh databases."""

from __future__ import annotations

import sys

from pipeline.settings import PROJECT_ROOT
from tests.conftest import AEB_DIR, require_shared

sys.path.insert(0, str(PROJECT_ROOT / "bench"))

import scratch_db
import search_bench


def test_search_bench_measures_both_loads_and_extraction_on_the_same_articles(pg_admin_url: str) -> None:
    require_shared(AEB_DIR)
    databases = scratch_db.Databases(pg_admin_url)
    results = search_bench.run_search_bench(rounds=1, databases=databases, limit=20)
    assert databases.made == 2 and not databases.created  # one fresh database per variant, dropped after
    assert results["pages"] == 20 and 15 <= results["articles"] <= 20
    assert results["extract_ms_per_article"] > results["load_ms_per_article_with_fts"] > 0
    assert results["load_ms_per_article_without_fts"] > 0 and results["search_bytes_per_article"] > 0
    assert results["extract_over_load_with_fts"] == round(
        results["extract_ms_per_article"] / results["load_ms_per_article_with_fts"], 2)
    lines = search_bench.render_search_bench(results)
    assert lines[0].startswith(f"full-text search load cost ({results['articles']} AEB articles")
    assert any("extraction / load with search" in line for line in lines)


def test_search_bench_says_why_it_skips_without_the_corpus(tmp_path) -> None:
    results = search_bench.run_search_bench(corpus=tmp_path / "absent")
    assert results["skipped"].startswith("search bench skipped: AEB corpus not found")
    assert search_bench.render_search_bench(results) == [results["skipped"]]

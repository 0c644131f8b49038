"""Near-duplicate benchmark: precision and recall on the labelled pair set, and the per-article dedup cost and
the loading process's memory with 0, 100k and 1M stored signatures (generated in SQL into a fresh database)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (str(REPO_ROOT), str(REPO_ROOT / "bench")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from sqlalchemy import Connection, Engine, text  # noqa: E402

from bench import dedup_pairs  # noqa: E402
from bench.scratch_db import Databases  # noqa: E402
from pipeline import db, demosite, load, neardup, store  # noqa: E402
from pipeline.dedupe import content_hash, word_count  # noqa: E402
from pipeline.load import LoadItem, load_articles  # noqa: E402
from pipeline.models import Article  # noqa: E402

LOGGER = logging.getLogger("bench.dedup")
RESULTS_FILE = REPO_ROOT / "bench" / "results" / "dedup.json"
STORE_SIZES = (100_000, 1_000_000)
BATCH = 25  # articles per load transaction, as flow.PROCESS_CHUNK
GENERATE_SLICE = 250_000  # stored signatures generated per INSERT ... SELECT
# settings compared on the pair set: (shingle words, permutations, bands); each at the chosen threshold
GRID = ((4, 64, 16), (5, 64, 16), (7, 64, 16), (5, 64, 32), (5, 96, 32), (5, 128, 32), (5, 128, 16))
Log = Callable[[str], None]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- quality on the labelled pairs

def evaluate_pairs(pairs: Sequence[dedup_pairs.Pair], scheme: neardup.Scheme) -> dict[str, Any]:
    """Precision and recall of the decision the loader takes (a shared band key, then an estimated
    similarity of at least the threshold), overall and per kind of pair."""
    signatures: dict[str, neardup.Signature] = {}

    def sign(body: str) -> neardup.Signature:
        if body not in signatures:
            signatures[body] = neardup.sign(body, scheme)
        return signatures[body]

    per_kind: dict[str, dict[str, int]] = {}
    true_pos = false_pos = false_neg = candidates = 0
    misses: list[dict[str, Any]] = []
    for pair in pairs:
        first, second = sign(pair.first), sign(pair.second)
        shared = bool(set(first.band_keys) & set(second.band_keys))
        score = neardup.similarity(first.minhash, second.minhash)
        predicted = shared and score >= scheme.threshold
        kind = per_kind.setdefault(pair.kind, {"pairs": 0, "predicted_near": 0})
        kind["pairs"] += 1
        kind["predicted_near"] += predicted
        if pair.near:
            true_pos += predicted
            false_neg += not predicted
            if not predicted:
                misses.append({"kind": pair.kind, "estimate": round(score, 3), "shared_band": shared})
        else:
            false_pos += predicted
            candidates += shared
    return {
        "scheme": scheme.name, "threshold": scheme.threshold, "pairs": len(pairs),
        "positives": true_pos + false_neg, "negatives": len(pairs) - true_pos - false_neg,
        "precision": true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0,
        "recall": true_pos / (true_pos + false_neg) if true_pos + false_neg else 1.0,
        "false_positives": false_pos, "false_negatives": false_neg, "negatives_sharing_a_band": candidates,
        "per_kind": per_kind, "misses": misses,
    }


def quality(corpus: Path | None, limit: int | None, progress: Log) -> dict[str, Any]:
    try:
        pages = dedup_pairs.load_aeb_pages(corpus, limit=limit)
    except FileNotFoundError as exc:  # aeb.CorpusMissingError
        progress(f"  AEB pairs skipped: {exc}")
        pages = []
    pairs = dedup_pairs.build_pairs(pages)
    progress(f"  {len(pairs)} labelled pairs ({sum(p.near for p in pairs)} near copies), {len(pages)} AEB pages")
    chosen = neardup.DEFAULT_SCHEME
    result = {"aeb_pages": len(pages), "chosen": evaluate_pairs(pairs, chosen), "grid": []}
    for words, permutations, bands in GRID:
        scheme = neardup.Scheme(words, permutations, bands, chosen.threshold)
        started = time.process_time()
        scored = evaluate_pairs(pairs, scheme)
        scored.pop("per_kind"), scored.pop("misses")
        scored.update(shingle_words=words, permutations=permutations, bands=bands,
                      seconds=round(time.process_time() - started, 2))
        result["grid"].append(scored)
    for threshold in (0.3, 0.4, 0.5, 0.6):
        scored = evaluate_pairs(pairs, neardup.Scheme(chosen.shingle_words, chosen.permutations, chosen.bands,
                                                      threshold))
        result.setdefault("thresholds", []).append({k: scored[k] for k in (
            "threshold", "precision", "recall", "false_positives", "false_negatives")})
    return result


# ---------------------------------------------------------------- cost with a large store

def rss_mib() -> float:
    """Resident memory of this (the loading) process."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def backend_cpu_seconds(conn: Connection) -> float:
    """CPU time used so far by this connection's PostgreSQL backend (a local server: /proc is readable)."""
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grow_store(engine: Engine, scheme: neardup.Scheme, start: int, stop: int, progress: Log) -> float:
    """Add stored articles start..stop-1 (tiny rows, one cluster each) with random-looking signatures of the
    scheme, in SQL; returns the seconds taken. The band-key index is rebuilt once at the end."""
    started = time.perf_counter()
    keys = ", ".join(f"hashtextextended(g::text, {band})" for band in range(scheme.bands))
    minhash = f"decode(repeat(md5(g::text), {scheme.permutations * 4 // 16}), 'hex')"
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE article_bands DROP CONSTRAINT IF EXISTS article_bands_pkey"))
        # ids after those of the articles and clusters the measurements loaded
        base = conn.execute(text("SELECT greatest((SELECT max(id) FROM articles), (SELECT max(id) FROM "
                                 "story_clusters), 0)")).scalar_one() - start
    for low in range(start, stop, GENERATE_SLICE):
        high = min(stop, low + GENERATE_SLICE)
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            conn.execute(text("SET LOCAL session_replication_role = replica"))  # bulk load: skip FK triggers
            conn.execute(text(
                "INSERT INTO story_clusters (id, representative_id, size, outlets, first_published_at, "
                "  last_published_at) "
                "SELECT g, g, 1, ARRAY['outlet ' || (g % 50)], timestamptz '2026-01-01' + g * interval '1 minute', "
                "  timestamptz '2026-01-01' + g * interval '1 minute' FROM generate_series(:low, :high) g"
            ), {"low": base + low + 1, "high": base + high})
            conn.execute(text(
                "INSERT INTO articles (id, canonical_url, url, title, published_at, source, body, word_count, "
                "  content_hash, extractor_version, cluster_id) OVERRIDING SYSTEM VALUE "
                "SELECT g, 'https://bench.invalid/' || g, 'https://bench.invalid/' || g, 'story ' || g, "
                "  timestamptz '2026-01-01' + g * interval '1 minute', 'outlet ' || (g % 50), 'stored', 1, "
                "  md5(g::text), 'bench', g FROM generate_series(:low, :high) g"
            ), {"low": base + low + 1, "high": base + high})
            conn.execute(text(
                f"INSERT INTO article_signatures (article_id, scheme, minhash, band_keys) "
                f"SELECT g, :scheme, {minhash}, ARRAY[{keys}] FROM generate_series(:low, :high) g"
            ), {"low": base + low + 1, "high": base + high, "scheme": scheme.name})
            conn.execute(text(
                "INSERT INTO article_bands (band_key, article_id) SELECT hashtextextended(g::text, band), g "
                "FROM generate_series(:low, :high) g, generate_series(0, :last_band) band"
            ), {"low": base + low + 1, "high": base + high, "last_band": scheme.bands - 1})
        progress(f"    {high:>9,} stored signatures ({time.perf_counter() - started:.0f} s)")
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        conn.execute(text(
            "ALTER TABLE article_bands ADD CONSTRAINT article_bands_pkey PRIMARY KEY (band_key, article_id)"))
        for sequence_of, table in (("story_clusters", "story_clusters"), ("articles", "articles")):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{sequence_of}', 'id'), "
                              f"(SELECT max(id) FROM {table}))"))
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        conn.execute(text("CHECKPOINT"))
    progress(f"    band-key index built, vacuumed ({time.perf_counter() - started:.0f} s in all)")
    return time.perf_counter() - started


def load_bodies(corpus_bodies: Sequence[str], count: int, seed: int) -> list[str]:
    """Bodies to load: real texts, half of them lightly edited copies (so lookups find candidates)."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        body = corpus_bodies[i % len(corpus_bodies)]
        bodies.append(dedup_pairs.syndicated_copy(body, rng) if i % 2 else body)
    return bodies


class DedupTimer:
    """Times the near-duplicate steps of the real load path (signing, the advisory locks, the band-key
    lookup, the decision, storing signatures, refreshing clusters) by wrapping the functions it calls."""

    STEPS = ((neardup, "sign"), (neardup, "lock_keys"), (neardup, "find_candidates"), (neardup, "store_signatures"),
             (load, "_nearest"), (load, "_refresh_clusters"))

    def __init__(self) -> None:
        self.seconds = 0.0
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> DedupTimer:
        for module, name in self.STEPS:
            original = getattr(module, name)
            self._saved.append((module, name, original))
            setattr(module, name, self._timed(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for module, name, original in self._saved:
            setattr(module, name, original)

    def _timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            tick = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - tick
        return timed


def measure_cost(engine: Engine, scheme: neardup.Scheme, bodies: Sequence[str], label: str, batches: int,
                 run_id: int, batch_size: int = BATCH) -> dict[str, Any]:
    """Load `batches` batches of new articles with load_articles, one transaction each as the pipeline does;
    ms per article for the near-duplicate steps and for the whole load, with the worker's and PostgreSQL's
    CPU, and the loading process's RSS before and after."""
    dedup_ms: list[float] = []
    load_ms: list[float] = []
    single_ms: list[float] = []
    worker_cpu = pg_cpu = 0.0
    rss_before = rss_mib()
    published = datetime(2026, 6, 1, tzinfo=UTC)
    for batch in range(batches + 1):
        chunk = [bodies[(batch * batch_size + i) % len(bodies)] for i in range(batch_size)]
        items = [LoadItem(0, _article(f"https://bench.invalid/{label}/{batch}/{i}", body, published
                                      + timedelta(minutes=i))) for i, body in enumerate(chunk)]
        with engine.begin() as conn, DedupTimer() as timer:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            cpu0, pg0 = time.process_time(), backend_cpu_seconds(conn)
            tick = time.perf_counter()
            load_articles(conn, items, run_id=run_id, extractor_version="bench", taxonomy_version="bench",
                          scheme=scheme)
            elapsed_load = time.perf_counter() - tick
            cpu1, pg1 = time.process_time(), backend_cpu_seconds(conn)
        # one article alone: the worst case per article (no round trip shared with others)
        one = [LoadItem(0, _article(f"https://bench.invalid/{label}/{batch}/single", single_variant(chunk[0]),
                                    published))]
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL synchronous_commit = off"))
            tick = time.perf_counter()
            load_articles(conn, one, run_id=run_id, extractor_version="bench", taxonomy_version="bench",
                          scheme=scheme)
            single_ms.append((time.perf_counter() - tick) * 1000)
        if batch == 0:
            continue  # warm-up: first connection, cold caches
        dedup_ms.append(timer.seconds / batch_size * 1000)
        load_ms.append(elapsed_load / batch_size * 1000)
        worker_cpu += cpu1 - cpu0
        pg_cpu += pg1 - pg0
    articles = batches * batch_size
    return {
        "articles": articles,
        "dedup_ms_median": statistics.median(dedup_ms), "dedup_ms_p95": _p95(dedup_ms),
        "load_ms_median": statistics.median(load_ms), "load_ms_p95": _p95(load_ms),
        "single_article_load_ms_median": statistics.median(single_ms), "single_article_load_ms_p95": _p95(single_ms),
        "worker_cpu_ms_per_article": worker_cpu / articles * 1000,
        "postgres_cpu_ms_per_article": pg_cpu / articles * 1000,
        "rss_mib_before": rss_before, "rss_mib_after": rss_mib(),
    }


def single_variant(body: str) -> str:
    return body + "\n\nThis version was filed for a single-article load."


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _article(url: str, body: str, published: datetime) -> Article:
    return Article(canonical_url=url, url=url, title=body[:60], author=None, published_at=published, language="en",
                   source=url.split("/")[3], body=body, word_count=word_count(body), content_hash=content_hash(body))


def cost(databases: Any, sizes: Sequence[int], corpus_bodies: Sequence[str], batches: int, progress: Log
         ) -> dict[str, Any]:
    scheme = neardup.DEFAULT_SCHEME
    url = databases.fresh()
    engine = db.engine_for(url)
    bodies = load_bodies(corpus_bodies, 2000, seed=11)
    with engine.begin() as conn:
        run_id = store.start_run(conn, "dedup-bench", "cli", datetime(2026, 1, 1, tzinfo=UTC),
                                 datetime(2026, 12, 1, tzinfo=UTC))
    stages: list[dict[str, Any]] = []
    stored = 0
    try:
        for size in (0, *sizes):
            if size > stored:
                progress(f"  generating stored signatures up to {size:,} ...")
                seconds = grow_store(engine, scheme, stored, size, progress)
                stored = size
            else:
                seconds = 0.0
            with engine.connect() as conn:
                table_mib = conn.execute(text(
                    "SELECT (pg_total_relation_size('article_signatures') + pg_total_relation_size('article_bands'))"
                " / 1048576.0")).scalar_one()
            progress(f"  measuring {batches} batches of {BATCH} articles with {size:,} stored signatures ...")
            result = measure_cost(engine, scheme, bodies, f"s{size}", batches, run_id)
            result.update(stored_signatures=size, generate_seconds=round(seconds, 1),
                          signatures_table_mib=float(table_mib))
            stages.append(result)
            progress(f"    dedup {result['dedup_ms_median']:.3f} ms/article median (p95 {result['dedup_ms_p95']:.3f}), "
                     f"whole load {result['load_ms_median']:.2f}, RSS {result['rss_mib_after']:.0f} MiB")
    finally:
        databases.settle(url)
    return {"scheme": scheme.name, "batch_size": BATCH, "stages": stages}


def _corpus_bodies(corpus: Path | None, limit: int | None, progress: Log = log) -> list[str]:
    """Texts to load: the demo site's originals, and the AEB true bodies when the corpus is there."""
    bodies = [a.body for a in demosite.load_site().articles if a.copy_of is None]
    try:
        sys.path.insert(0, str(REPO_ROOT / "bench"))
        import aeb

        bodies += [page.truth for page in aeb.load_corpus(aeb.corpus_dir(corpus), limit=limit)
                   if len(page.truth.split()) >= 20]
    except FileNotFoundError as exc:  # aeb.CorpusMissingError
        progress(f"  AEB bodies skipped for the cost measurement (demo bodies only): {exc}")
    return bodies


def run_dedup_bench(sizes: Sequence[int] = STORE_SIZES, corpus: Path | None = None, limit: int | None = None,
                    batches: int = 40, databases: Any = None, progress: Log = log) -> dict[str, Any]:
    """Both measurements; `databases` is bench/run.py's Databases (made and closed here when not given)."""
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu_count": os.cpu_count()}
    progress("near-duplicates: precision and recall on the labelled pair set ...")
    results["quality"] = quality(corpus, limit, progress)
    progress("near-duplicates: per-article cost as the store grows ...")
    own = databases is None
    if own:
        databases = Databases()
    try:
        results["cost"] = cost(databases, sizes, _corpus_bodies(corpus, limit, progress), batches, progress)
    finally:
        if own:
            databases.close()
    return results


def render_dedup_bench(results: dict[str, Any]) -> list[str]:
    """The report lines for `make bench`."""
    lines = []
    quality_result = results.get("quality")
    if quality_result:
        chosen = quality_result["chosen"]
        lines += [f"Near-duplicate decision ({chosen['scheme']}, threshold {chosen['threshold']}) on "
                  f"{chosen['pairs']} labelled pairs ({chosen['positives']} near copies, {quality_result['aeb_pages']} "
                  "AEB pages):",
                  f"  precision {chosen['precision']:.4f}  recall {chosen['recall']:.4f}  "
                  f"(targets >= 0.99 and >= 0.95; {chosen['false_positives']} false positives, "
                  f"{chosen['false_negatives']} missed)"]
        for kind, counts in sorted(chosen["per_kind"].items()):
            lines.append(f"    {kind:<22} {counts['predicted_near']:>6} of {counts['pairs']:>6} pairs called "
                         "near copies")
        lines.append("  settings compared (words per shingle, permutations, bands):")
        for row in quality_result["grid"]:
            lines.append(f"    w{row['shingle_words']} p{row['permutations']:<3} b{row['bands']:<3} "
                         f"P {row['precision']:.4f} R {row['recall']:.4f}  "
                         f"negatives sharing a band {row['negatives_sharing_a_band']}")
        lines.append("  thresholds: " + ", ".join(f"{t['threshold']}: P {t['precision']:.4f} R {t['recall']:.4f}"
                                                  for t in quality_result.get("thresholds", [])))
    cost_result = results.get("cost")
    if cost_result:
        lines.append(f"Dedup cost per article (batches of {cost_result['batch_size']}, median / p95 ms; worker and "
                     "PostgreSQL CPU; the loading process's RSS):")
        for stage in cost_result["stages"]:
            lines.append(
                f"  {stage['stored_signatures']:>9,} stored: dedup {stage['dedup_ms_median']:.3f} / "
                f"{stage['dedup_ms_p95']:.3f}, whole load {stage['load_ms_median']:.2f} / {stage['load_ms_p95']:.2f}, "
                f"one-article load {stage['single_article_load_ms_median']:.2f}; CPU worker "
                f"{stage['worker_cpu_ms_per_article']:.2f} + Postgres {stage['postgres_cpu_ms_per_article']:.2f}; "
                f"RSS {stage['rss_mib_before']:.0f} -> {stage['rss_mib_after']:.0f} MiB; "
                f"signatures {stage['signatures_table_mib']:.0f} MiB")
        baseline = cost_result["stages"][0]
        last = cost_result["stages"][-1]
        lines.append(f"  with {last['stored_signatures']:,} stored against an empty store: dedup "
                     f"{last['dedup_ms_median'] / baseline['dedup_ms_median']:.2f}x, RSS "
                     f"{last['rss_mib_after'] - baseline['rss_mib_after']:+.0f} MiB (target: median <= 2 ms, flat)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, help="AEB directory (default ../shared/corpora/aeb or $NEWS_AEB_DIR)")
    parser.add_argument("--limit", type=int, help="only the first N AEB pages")
    parser.add_argument("--sizes", type=int, nargs="*", default=list(STORE_SIZES), help="stored signatures")
    parser.add_argument("--batches", type=int, default=40, help="measured batches per store size")
    parser.add_argument("--out", type=Path, default=RESULTS_FILE, help="where to write the JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = run_dedup_bench(args.sizes, args.corpus, args.limit, args.batches)
    print("\n".join(render_dedup_bench(results)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    log(f"\nfigures written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

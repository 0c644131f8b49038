"""Article Extraction Benchmark: score a body extractor against the AEB ground truth."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

LOGGER = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_ENV = "NEWS_AEB_DIR"
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "corpora" / "aeb"
GROUND_TRUTH_FILE = "ground-truth.json"
SHINGLE_SIZE = 4
# Same tokeniser as the upstream evaluate.py: case is kept, punctuation dropped.
TOKEN_RE = re.compile(r"\w+")

ExtractFn = Callable[[bytes, str], str | None]
NAME_WIDTH = 46
# Plain trafilatura.extract option sets, compared with --variants when choosing our options.
VARIANTS: dict[str, dict[str, Any]] = {
    "include_comments=False": {"include_comments": False},
    "no comments, url passed": {"include_comments": False, "url": True},
    "no comments, favor_precision": {"include_comments": False, "favor_precision": True},
    "no comments, favor_recall": {"include_comments": False, "favor_recall": True},
    "no comments, fast": {"include_comments": False, "fast": True},
    "no comments, favor_recall, fast": {"include_comments": False, "favor_recall": True, "fast": True},
    "no comments, favor_precision, fast": {"include_comments": False, "favor_precision": True, "fast": True},
    "no comments, include_tables=False": {"include_comments": False, "include_tables": False},
    "no comments, favor_precision, no tables": {
        "include_comments": False,
        "favor_precision": True,
        "include_tables": False,
    },
    "no comments, deduplicate": {"include_comments": False, "deduplicate": True},
    "no comments, favor_precision, with_metadata": {
        "include_comments": False,
        "favor_precision": True,
        "with_metadata": True,
    },
}


class CorpusMissingError(FileNotFoundError):
    """The AEB corpus is not where we were told to look."""


class AebPage(NamedTuple):
    """One benchmark page: its id, the URL it was fetched from, the raw HTML and the true body."""

    id: str
    url: str
    html: bytes
    truth: str


def corpus_dir(override: str | Path | None = None) -> Path:
    """Where the corpus lives: the explicit override, else $NEWS_AEB_DIR, else ../shared/corpora/aeb."""
    if override:
        return Path(override)
    if env_dir := os.environ.get(CORPUS_ENV):
        return Path(env_dir)
    return DEFAULT_CORPUS


def load_corpus(root: Path, limit: int | None = None) -> list[AebPage]:
    """Read ground-truth.json and the gzipped pages it names, sorted by id (first `limit` only if given)."""
    truth_path = root / GROUND_TRUTH_FILE
    if not truth_path.is_file():
        raise CorpusMissingError(
            f"AEB corpus not found: {truth_path} does not exist "
            f"(pass --corpus or set {CORPUS_ENV} to the aeb directory)"
        )
    ground_truth: dict[str, dict[str, str]] = json.loads(truth_path.read_text(encoding="utf-8"))
    pages: list[AebPage] = []
    for page_id in sorted(ground_truth)[:limit]:
        html_path = root / "html" / f"{page_id}.html.gz"
        if not html_path.is_file():
            raise CorpusMissingError(f"AEB corpus incomplete: {html_path} is missing")
        entry = ground_truth[page_id]
        pages.append(
            AebPage(
                page_id, entry.get("url", ""), gzip.decompress(html_path.read_bytes()), entry["articleBody"]
            )
        )
    return pages


def _shingles(text: str) -> Counter[tuple[str, ...]]:
    """Multiset of 4-token shingles; a text shorter than 4 tokens is one short shingle, as upstream."""
    tokens = TOKEN_RE.findall(text or "")
    count = max(1, len(tokens) - SHINGLE_SIZE + 1)
    return Counter(shingle for i in range(count) if (shingle := tuple(tokens[i : i + SHINGLE_SIZE])))


def match_counts(pred: str, truth: str) -> tuple[int, int, int]:
    """True positive, false positive and false negative shingle counts of one page."""
    pred_shingles, true_shingles = _shingles(pred), _shingles(truth)
    true_pos = sum((pred_shingles & true_shingles).values())
    return true_pos, pred_shingles.total() - true_pos, true_shingles.total() - true_pos


def _ratios(true_pos: int, false_pos: int, false_neg: int) -> tuple[float, float, float]:
    """Precision, recall and F1 with upstream's conventions for empty texts."""
    if false_pos == false_neg == 0:
        return 1.0, 1.0, 1.0
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(pred: str, truth: str) -> tuple[float, float, float]:
    """Precision, recall and F1 of one predicted body against the true body (both empty counts as perfect)."""
    return _ratios(*match_counts(pred, truth))


def evaluate(extract_fn: ExtractFn, corpus: Sequence[AebPage], warm_up: bool = True) -> dict[str, Any]:
    """Run `extract_fn(html, url)` over the corpus and aggregate the scores the way upstream does.

    With `warm_up`, one untimed call first pays the lazy imports and caches (dateparser's locales
    cost about half a second), so pages/s compares extractors rather than who ran first.

    precision: mean over pages with a non-empty prediction; recall: mean over pages with a non-empty
    truth (an empty prediction scores recall 0 there); f1: harmonic mean of those two (upstream's
    headline figure). f1_mean is the stricter mean of per-page F1 over pages with a non-empty truth.
    """
    precisions: list[float] = []
    recalls: list[float] = []
    page_f1s: list[float] = []
    per_page: dict[str, tuple[float, float, float]] = {}
    empty = 0
    elapsed = 0.0
    if warm_up and corpus:
        extract_fn(corpus[0].html, corpus[0].url)
    for page in corpus:
        started = time.perf_counter()
        pred = extract_fn(page.html, page.url) or ""
        elapsed += time.perf_counter() - started
        true_pos, false_pos, false_neg = match_counts(pred, page.truth)
        precision, recall, f1 = _ratios(true_pos, false_pos, false_neg)
        per_page[page.id] = (precision, recall, f1)
        empty += not TOKEN_RE.search(pred)
        if true_pos + false_pos:
            precisions.append(precision)
        if true_pos + false_neg:
            recalls.append(recall)
            page_f1s.append(f1)
    mean_p = statistics.fmean(precisions) if precisions else 0.0
    mean_r = statistics.fmean(recalls) if recalls else 0.0
    return {
        "pages": len(corpus),
        "precision": mean_p,
        "recall": mean_r,
        "f1": 2 * mean_p * mean_r / (mean_p + mean_r) if mean_p + mean_r else 0.0,
        "f1_mean": statistics.fmean(page_f1s) if page_f1s else 0.0,
        "empty": empty,
        "seconds": elapsed,
        "pages_per_s": len(corpus) / elapsed if elapsed else 0.0,
        "per_page": per_page,
    }


def format_row(name: str, result: dict[str, Any]) -> str:
    """One line of the comparison table."""
    return (
        f"{name:<{NAME_WIDTH}} {result['precision']:7.4f} {result['recall']:7.4f} {result['f1']:7.4f} "
        f"{result['f1_mean']:8.4f} {result['empty']:6d} {result['pages_per_s']:8.1f}"
    )


def _ours(html: bytes, url: str) -> str:
    """Our extraction stage, body only."""
    from pipeline.extract import extract

    return extract(html, url).body


def _trafilatura_defaults(html: bytes, url: str) -> str | None:
    """Plain `trafilatura.extract(html)` with every option at its default, the reference to beat."""
    import trafilatura

    return trafilatura.extract(html)


def _trafilatura_variant(options: dict[str, Any]) -> ExtractFn:
    """`trafilatura.extract` with the given options; "url": True passes the page URL."""
    import trafilatura

    kwargs = {key: value for key, value in options.items() if key != "url"}

    def run(html: bytes, url: str) -> str | None:
        document = trafilatura.bare_extraction(html, url=url if options.get("url") else None, **kwargs)
        return document.text if document else None

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Print our extractor against trafilatura's defaults on the AEB corpus."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", help=f"aeb directory (default: ${CORPUS_ENV} or {DEFAULT_CORPUS})")
    parser.add_argument("--limit", type=int, help="score only the first N pages (sorted by id)")
    parser.add_argument("--worst", type=int, default=0, help="list our N lowest-F1 pages")
    parser.add_argument("--variants", action="store_true", help="also score the option sets in VARIANTS")
    parser.add_argument("--json", type=Path, help="also write the aggregate results to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    # Run as `python bench/aeb.py`, the repository root is not on sys.path yet.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from pipeline.extract import EXTRACTOR_VERSION

    try:
        corpus = load_corpus(corpus_dir(args.corpus), args.limit)
    except CorpusMissingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = {
        f"ours ({EXTRACTOR_VERSION})": evaluate(_ours, corpus),
        "trafilatura.extract defaults": evaluate(_trafilatura_defaults, corpus),
    }
    if args.variants:
        for name, options in VARIANTS.items():
            results[name] = evaluate(_trafilatura_variant(options), corpus)
    print(f"AEB: {len(corpus)} pages")
    print(
        f"{'extractor':<{NAME_WIDTH}} {'P':>7} {'R':>7} {'F1':>7} {'F1 mean':>8} {'empty':>6} {'pages/s':>8}"
    )
    for name, result in results.items():
        print(format_row(name, result))
    ours = next(iter(results.values()))
    if args.worst:
        print(f"\nour {args.worst} lowest-F1 pages (id, P, R, F1):")
        ranked = sorted(ours["per_page"].items(), key=lambda item: item[1][2])
        for page_id, (precision, recall, f1) in ranked[: args.worst]:
            print(f"  {page_id[:16]}  {precision:.3f} {recall:.3f} {f1:.3f}")
    if args.json:
        summary = {name: {k: v for k, v in r.items() if k != "per_page"} for name, r in results.items()}
        args.json.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

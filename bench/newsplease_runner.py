"""Time news-please's `NewsPlease.from_html` over saved pages, for the side-by-side extraction benchmark.

Runs inside .venv-newsplease (standard library + news-please only, see requirements-bench.txt):

    .venv-newsplease/bin/python bench/newsplease_runner.py --pages pages.json --out results.json

`--pages` is either a JSON file listing `{"url": ..., "path": ...}` objects (relative paths are taken
from the list file's folder) or a folder whose `*.html` / `*.html.gz` files are read without URLs.
Pages are read and decoded before timing starts; one untimed warm-up call absorbs lazy imports.
The output holds `pages`, `seconds` (timed time of one pass over all pages, the mean when
`--repeat` > 1), `per_page_ms` (one number per page in input order, the median over repeats),
`errors` (pages whose extraction raised), `empty` (pages extracted with no main text) and `version`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

LOGGER = logging.getLogger("newsplease_runner")
GZIP_MAGIC = b"\x1f\x8b"
PAGE_PATTERNS = ("*.html", "*.html.gz")


@dataclass(frozen=True)
class Page:
    """One saved page: where it came from and its decoded HTML."""

    url: str
    path: Path
    html: str


def read_html(path: Path) -> str:
    """Return the page's text; gzip is recognised by its magic bytes, bytes are decoded as UTF-8."""
    data = path.read_bytes()
    if data.startswith(GZIP_MAGIC):
        data = gzip.decompress(data)
    # The benchmark corpora are UTF-8; a stray bad byte should not drop a page from the timing.
    return data.decode("utf-8", errors="replace")


def list_pages(source: Path) -> list[tuple[str, Path]]:
    """(url, path) pairs from a JSON page list, or from every HTML file of a folder (no URLs then)."""
    if source.is_dir():
        files = sorted({file for pattern in PAGE_PATTERNS for file in source.glob(pattern)})
        return [("", file) for file in files]
    entries = json.loads(source.read_text(encoding="utf-8"))
    if isinstance(entries, dict):
        entries = entries["pages"]
    return [(entry.get("url") or "", source.parent / entry["path"]) for entry in entries]


def load_pages(source: Path) -> list[Page]:
    return [Page(url=url, path=path, html=read_html(path)) for url, path in list_pages(source)]


def time_pages(pages: list[Page], repeat: int) -> dict[str, object]:
    """Extract every page `repeat` times after one warm-up call; return the timings and outcomes."""
    # newspaper4k warns at import that its optional NLP extra is missing; from_html does not use it.
    warnings.filterwarnings("ignore", message="nltk is not installed")
    from newsplease import NewsPlease

    try:
        NewsPlease.from_html(pages[0].html, url=pages[0].url or None, fetch_images=False)
    except Exception as exc:  # the timed pass records this page's failure; warm-up only loads code
        LOGGER.warning("warm-up on %s failed: %s: %s", pages[0].path, type(exc).__name__, exc)

    timings_ms: list[list[float]] = [[] for _ in pages]
    failures: dict[int, str] = {}
    empty: set[int] = set()
    texts: dict[str, str] = {}
    for _ in range(repeat):
        for index, page in enumerate(pages):
            started = time.perf_counter()
            try:
                article = NewsPlease.from_html(page.html, url=page.url or None, fetch_images=False)
            except Exception as exc:  # a crash inside the extractor is a measured outcome, not a stop
                timings_ms[index].append((time.perf_counter() - started) * 1000)
                failures.setdefault(index, f"{type(exc).__name__}: {exc}")
                continue
            timings_ms[index].append((time.perf_counter() - started) * 1000)
            text = getattr(article, "maintext", None) or ""
            if not text.strip():
                empty.add(index)
            texts[page.url or str(page.path)] = text

    per_page_ms = [round(statistics.median(samples), 3) for samples in timings_ms]
    total_seconds = sum(sum(samples) for samples in timings_ms) / 1000 / repeat
    return {
        "tool": "news-please",
        "version": version("news-please"),
        "python": platform.python_version(),
        "pages": len(pages),
        "repeat": repeat,
        "seconds": round(total_seconds, 4),
        "median_ms": round(statistics.median(per_page_ms), 3),
        "per_page_ms": per_page_ms,
        "errors": len(failures),
        "error_details": [
            {"url": pages[index].url, "path": str(pages[index].path), "error": message}
            for index, message in sorted(failures.items())
        ],
        "empty": len(empty - failures.keys()),
        "texts": texts,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pages",
        type=Path,
        required=True,
        help='JSON list of {"url", "path"} objects, or a folder of *.html / *.html.gz files',
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes over the pages (default 1)")
    parser.add_argument(
        "--texts",
        type=Path,
        help="also write the extracted main text of each page here, keyed by URL or path",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    pages = load_pages(args.pages)
    if not pages:
        LOGGER.error("no pages found in %s", args.pages)
        return 2

    results = time_pages(pages, args.repeat)
    texts = results.pop("texts")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.texts:
        args.texts.write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(
        f"news-please {results['version']}: {results['pages']} pages x{results['repeat']}, "
        f"{results['seconds']:.2f} s per pass, median {results['median_ms']:.1f} ms/page, "
        f"{results['errors']} errors, {results['empty']} empty -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

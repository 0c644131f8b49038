"""Topic tagging benchmark: per-topic precision and recall on the labelled set, docs/s on one core for the
reviewed taxonomy and a generated 500-rule taxonomy, and the AEB pages that must not be "DPRK sanctions".

Run alone (`.venv/bin/python bench/topics_bench.py [--json FILE]`) or import run_topics_bench() and
render_topics_bench() from bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.topics import Taxonomy, load_taxonomy  # noqa: E402

LABELLED = REPO_ROOT / "bench" / "data" / "topics_labelled.yaml"
SEED_ARTICLE = REPO_ROOT.parent / "shared" / "examples" / "seed-article.txt"
WATCHED = "dprk-sanctions"
GENERATED_RULES = 500
ROUNDS = 7
ROUND_SECONDS = 0.4  # each timed pass repeats the documents for at least this long
TOKEN = re.compile(r"\w+")
RANDOM_SEED = 20261128


def load_labelled(path: Path = LABELLED) -> list[dict[str, Any]]:
    """The labelled items: id, kind, topics, title, body."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))["items"]


def with_ancestors(taxonomy: Taxonomy, topic_ids: Sequence[str]) -> set[str]:
    parents = {topic.id: topic.parent for topic in taxonomy.topics}
    found = set(topic_ids)
    for tid in topic_ids:
        parent = parents[tid]
        while parent is not None:
            found.add(parent)
            parent = parents[parent]
    return found


def evaluate(taxonomy: Taxonomy, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Per topic: precision, recall, true/false positives and false negatives (gold parents implied)."""
    per_topic = {t.id: {"tp": 0, "fp": 0, "fn": 0, "false_positives": [], "false_negatives": []}
                 for t in taxonomy.topics}
    for item in items:
        gold = with_ancestors(taxonomy, item["topics"])
        got = {hit.topic_id for hit in taxonomy.match(item.get("title") or None, item["body"])}
        for tid, row in per_topic.items():
            if tid in got and tid in gold:
                row["tp"] += 1
            elif tid in got:
                row["fp"] += 1
                row["false_positives"].append(item["id"])
            elif tid in gold:
                row["fn"] += 1
                row["false_negatives"].append(item["id"])
    for row in per_topic.values():
        row["precision"] = row["tp"] / (row["tp"] + row["fp"]) if row["tp"] + row["fp"] else 1.0
        row["recall"] = row["tp"] / (row["tp"] + row["fn"]) if row["tp"] + row["fn"] else 1.0
    return per_topic


def generated_taxonomy(items: list[dict[str, Any]], rules: int = GENERATED_RULES, seed: int = RANDOM_SEED) -> str:
    """A YAML taxonomy of `rules` topics shaped like the reviewed one: per topic an entity group (mostly
    invented names, some real capitalised words of the labelled texts, an acronym now and then) and shared
    theme groups of real lower-case words (some as 'stem*'); rules mix near / near within a sentence /
    all+any, every fifth has a 'not', every tenth topic is the parent of the next nine."""
    rng = random.Random(seed)
    text = " ".join(f"{item.get('title') or ''} {item['body']}" for item in items)
    names = sorted({w for w in TOKEN.findall(text) if w[:1].isupper() and len(w) > 3 and w.isalpha()})
    words = sorted({w for w in TOKEN.findall(text) if w.islower() and len(w) > 4 and w.isalpha()})

    def invented() -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(5, 9))).capitalize()

    themes = {}
    for number in range(120):
        terms = set()
        while len(terms) < rng.randint(4, 8):
            word = rng.choice(words)
            terms.add(f"{word[:max(5, len(word) - 3)]}*" if rng.random() < 0.3 else word)
        themes[f"theme_{number}"] = sorted(terms)
    groups: dict[str, Any] = {**themes}
    topics = []
    for number in range(rules):
        entity: set[str] = set()
        while len(entity) < rng.randint(3, 5):
            entity.add(rng.choice(names) if rng.random() < 0.3 else
                       (invented() if rng.random() < 0.6 else f"{invented()} {invented()}"))
        acronym = [invented()[:3].upper()] if number % 7 == 0 else []
        groups[f"entity_{number}"] = {"terms": sorted(entity), "case_sensitive": acronym}
        theme, other = f"theme_{number % 120}", f"theme_{(number * 7 + 3) % 120}"
        shape = number % 3
        if shape == 0:
            rule: dict[str, Any] = {"near": [f"entity_{number}", theme]}
        elif shape == 1:
            rule = {"near": [f"entity_{number}", theme], "within": "sentence"}
        else:
            rule = {"all": [f"entity_{number}", {"any": [theme, other]}]}
        if number % 5 == 4:
            rule = {**rule, "not": [f"entity_{number - 1}"]} if shape != 2 else {
                "all": [rule, {"not": [f"entity_{number - 1}"]}]}
        topic = {"id": f"topic-{number}", "label": f"Topic {number}", "rule": rule}
        if number % 10:
            topic["parent"] = f"topic-{number - number % 10}"
        topics.append(topic)
    return yaml.safe_dump({"defaults": {"min_score": 2, "weights": {"title": 2, "lead": 1.5, "body": 1}},
                           "groups": groups, "topics": topics}, sort_keys=False, allow_unicode=True)


def _pass(fn: Callable[[str | None, str], object], docs: list[tuple[str | None, str]]) -> tuple[int, float]:
    """Repeat fn over docs for at least ROUND_SECONDS; (documents done, seconds)."""
    done, started = 0, time.perf_counter()
    while True:
        for title, body in docs:
            fn(title, body)
        done += len(docs)
        elapsed = time.perf_counter() - started
        if elapsed >= ROUND_SECONDS:
            return done, elapsed


def _tokenise(title: str | None, body: str) -> object:
    return TOKEN.findall(f"{title or ''}\n{body}".lower())


def throughput(taxonomy: Taxonomy, docs: list[tuple[str | None, str]], rounds: int = ROUNDS) -> dict[str, Any]:
    """docs/s of taxonomy.match and of the baseline (lower-casing and tokenising the same texts with
    re.findall(r'\\w+')), alternating in each round; medians, and the median of the per-round ratios."""
    rates, baseline, ratios = [], [], []
    for _ in range(rounds):
        done, seconds = _pass(taxonomy.match, docs)
        base_done, base_seconds = _pass(_tokenise, docs)
        rates.append(done / seconds)
        baseline.append(base_done / base_seconds)
        ratios.append(rates[-1] / baseline[-1])
    return {"docs_per_s": statistics.median(rates), "docs_per_s_range": [min(rates), max(rates)],
            "baseline_docs_per_s": statistics.median(baseline), "ratio_to_baseline": statistics.median(ratios),
            "mean_chars": statistics.mean(len(body) + len(title or "") for title, body in docs), "docs": len(docs)}


def aeb_documents() -> list[tuple[str, str | None, str]] | None:
    """(page id, title, body) of the AEB pages as our extraction stores them; None when ../shared is absent."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import aeb

    root = aeb.corpus_dir()
    if not (root / aeb.GROUND_TRUTH_FILE).is_file():
        return None
    from pipeline.extract import extract

    documents = []
    for page in aeb.load_corpus(root):
        extraction = extract(page.html, page.url or None, min_words=1)
        documents.append((page.id, extraction.title, extraction.body))
    return documents


def run_topics_bench(rounds: int = ROUNDS) -> dict[str, Any]:
    """Every figure of the topic benchmark, JSON-ready."""
    taxonomy = load_taxonomy()
    items = load_labelled()
    docs = [(item.get("title") or None, item["body"]) for item in items]
    results: dict[str, Any] = {
        "taxonomy_version": taxonomy.version,
        "labelled_items": len(items),
        "per_topic": evaluate(taxonomy, items),
        "speed": {"reviewed": throughput(taxonomy, docs, rounds)},
        "baseline": "lower-casing and tokenising the same texts with re.findall(r'\\w+'), same run, same core",
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "generated.yaml"
        path.write_text(generated_taxonomy(items), encoding="utf-8")
        started = time.perf_counter()
        generated = load_taxonomy(path)
        results["generated_compile_seconds"] = time.perf_counter() - started
        results["generated_topics"] = len(generated.topics)
        results["generated_terms"] = sum(len(t) for t in generated.groups.values())
        results["speed"]["generated_500"] = throughput(generated, docs, rounds)
        pages = aeb_documents()
        if pages is None:
            results["aeb"] = {"skipped": f"{REPO_ROOT.parent / 'shared' / 'corpora' / 'aeb'} is absent"}
        else:
            page_docs = [(title, body) for _, title, body in pages]
            tagged = [page_id for page_id, title, body in pages
                      if WATCHED in {hit.topic_id for hit in taxonomy.match(title, body)}]
            results["aeb"] = {
                "pages": len(pages),
                "tagged_dprk_sanctions": tagged,
                "speed_reviewed": throughput(taxonomy, page_docs, max(3, rounds // 2)),
                "speed_generated_500": throughput(generated, page_docs, max(3, rounds // 2)),
            }
    if SEED_ARTICLE.is_file():
        lines = [line.strip() for line in SEED_ARTICLE.read_text(encoding="utf-8").splitlines() if line.strip()]
        hits = [hit.topic_id for hit in taxonomy.match(lines[1], "\n".join(lines[3:]))]
        results["seed_article"] = {"topics": hits, "tagged_dprk_sanctions": WATCHED in hits}
    else:
        results["seed_article"] = {"skipped": f"{SEED_ARTICLE} is absent"}
    return results


def render_topics_bench(results: dict[str, Any]) -> list[str]:
    """Report lines for people."""
    lines = [f"topic tagging (taxonomy {results['taxonomy_version']}, labelled set of "
             f"{results['labelled_items']} items)", "  topic                      precision  recall   tp  fp  fn"]
    for tid, row in results["per_topic"].items():
        lines.append(f"  {tid:<26} {row['precision']:9.3f} {row['recall']:7.3f} {row['tp']:4d} {row['fp']:3d} "
                     f"{row['fn']:3d}")
    watched = results["per_topic"][WATCHED]
    if watched["false_positives"] or watched["false_negatives"]:
        lines.append(f"  {WATCHED}: false positives {watched['false_positives']}, "
                     f"false negatives {watched['false_negatives']}")
    lines.append(f"  speed on one core, baseline = {results['baseline']}:")
    for name, speed in results["speed"].items():
        lines.append(f"    {name:<14} {speed['docs_per_s']:9.0f} docs/s (rounds {speed['docs_per_s_range'][0]:.0f}"
                     f"-{speed['docs_per_s_range'][1]:.0f}), {speed['ratio_to_baseline']:.2f}x the baseline's "
                     f"{speed['baseline_docs_per_s']:.0f} docs/s; {speed['mean_chars']:.0f} chars per doc")
    lines.append(f"    generated taxonomy: {results['generated_topics']} topics, {results['generated_terms']} terms, "
                 f"compiled in {results['generated_compile_seconds']:.2f} s")
    aeb = results["aeb"]
    if "skipped" in aeb:
        lines.append(f"  AEB: skipped ({aeb['skipped']})")
    else:
        lines.append(f"  AEB: {len(aeb['tagged_dprk_sanctions'])} of {aeb['pages']} pages tagged {WATCHED} "
                     f"{aeb['tagged_dprk_sanctions'] or ''}".rstrip())
        for name in ("speed_reviewed", "speed_generated_500"):
            speed = aeb[name]
            lines.append(f"    {name:<20} {speed['docs_per_s']:7.0f} pages/s ({speed['mean_chars']:.0f} chars per "
                         f"page), {speed['ratio_to_baseline']:.2f}x the baseline")
    seed = results["seed_article"]
    lines.append(f"  seed article: skipped ({seed['skipped']})" if "skipped" in seed else
                 f"  seed article: {', '.join(seed['topics'])}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"timed rounds (default {ROUNDS})")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    results = run_topics_bench(args.rounds)
    print("\n".join(render_topics_bench(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The labelled near-duplicate pair set, built at run time from the AEB corpus and from text we wrote."""

from __future__ import annotations

import itertools
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline import demosite  # noqa: E402

SEED = 3  # the synthetic edits are random but the same on every run
SAME_TOPIC_PAIRS = 300  # negatives: the AEB pairs with the most vocabulary in common
_WORD = re.compile(r"\w+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")

# Things other outlets put around a wire story they republish (our own wording).
DATELINES = ("SEOUL (Meridian Wire) -", "LONDON, Nov 4 (Globe Dispatch) -", "HONG KONG -", "WASHINGTON (AP) -",
             "Updated 09:40 GMT.")
TAGLINES = ("(Reporting by Hannah Lindqvist; editing by the Asia desk)",
            "Copyright 2026 Harbor Business Post. All rights reserved. This material may not be republished.",
            "Additional reporting by our correspondents. Follow our live coverage for the latest updates.",
            "This article was amended on 4 November to correct the spelling of a name.",
            "Sign up to our morning briefing to get the day's top stories in your inbox.")
CONTEXT = ("The region has been a focus of international attention for months, and analysts expect more "
           "announcements before the end of the year.",
           "Our correspondent said the mood in the capital was calm, with few signs of the tension seen last week.",
           "Officials did not immediately respond to a request for comment on Tuesday evening.")
WORD_SWAPS = (("said", "told reporters"), ("percent", "%"), ("million", "mln"), ("Tuesday", "on Tuesday"),
              ("about", "roughly"), ("government", "administration"), ("company", "firm"), ("will", "would"))

# Two articles on one event, written independently, sharing one quote (our own text): must stay apart.
SAME_EVENT = (
    ("Port authorities in Busan said on Monday that they had held a cargo ship for three days after inspectors "
     "found undeclared drums of chemicals in its hold. The vessel, which sails under a Pacific flag, was due to "
     "leave for Vladivostok. \"We will not allow our port to be used as a back door for banned goods,\" the "
     "harbour master told a news conference. The owner of the ship could not be reached. Customs officers "
     "said tests on the drums would take at least a week, and the crew of nineteen would stay on board "
     "until the results were known.",
     "A freighter bound for Russia has been stuck in Busan since Friday, and its crew say they have no idea "
     "when they can sail. Local shipping agents described the inspection as unusually thorough, with divers "
     "checking the hull and dogs brought on board. \"We will not allow our port to be used as a back door for "
     "banned goods,\" the harbour master said. Traders in the city worry that long checks will push ships to "
     "other ports in the region, where fees are lower and paperwork faster, and a trade group has asked for "
     "a meeting with the ministry."),
    ("The central bank kept its main interest rate at 3.25 percent on Thursday, as expected, but two of the "
     "seven board members voted for a cut. Governor Lee said inflation was moving toward the target of two "
     "percent. \"The direction is clear, the timing is not,\" he said. Markets now see a cut in January as "
     "likely. The won weakened slightly after the decision, and government bond yields fell to their lowest "
     "level since the spring.",
     "Shoppers in Seoul say prices for vegetables and fuel are still too high, even as official figures show "
     "inflation cooling. At a market in Mangwon, a grocer said his customers buy smaller bags of cabbage than "
     "a year ago. \"The direction is clear, the timing is not,\" the central bank governor said on Thursday "
     "after leaving rates unchanged. Economists at two local brokers expect a cut early next year, though they "
     "warn that a weaker currency could delay it."),
)


@dataclass(frozen=True)
class Pair:
    """Two bodies and whether they are the same story (`near`); `kind` says how the pair was made."""

    first: str
    second: str
    near: bool
    kind: str


def syndicated_copy(body: str, rng: random.Random) -> str:
    """A republication with light edits: a dateline or headline line, a word or two changed, maybe a
    paragraph dropped or a local sentence added, and a tag line or boilerplate at the end."""
    paragraphs = [p for p in body.split("\n") if p.strip()]
    if len(paragraphs) < 3:  # one long block: split it into sentences to edit at that grain
        paragraphs = [s for s in _SENTENCE.split(body) if s.strip()]
    if len(paragraphs) >= 6 and rng.random() < 0.5:
        del paragraphs[rng.randrange(1, len(paragraphs))]
    if rng.random() < 0.5:
        paragraphs.insert(rng.randrange(1, len(paragraphs) + 1), rng.choice(CONTEXT))
    swaps = rng.sample(WORD_SWAPS, 3)
    for old, new in swaps:
        targets = [i for i, p in enumerate(paragraphs) if f" {old} " in p]
        if targets:
            i = rng.choice(targets)
            paragraphs[i] = paragraphs[i].replace(f" {old} ", f" {new} ", 1)
    if rng.random() < 0.6:
        paragraphs[0] = f"{rng.choice(DATELINES)} {paragraphs[0]}"
    else:
        paragraphs.insert(0, "Breaking: " + " ".join(_WORD.findall(paragraphs[0])[:9]))  # a new headline line
    paragraphs.append(rng.choice(TAGLINES))
    return "\n\n".join(paragraphs)


def with_shared_passage(body: str, other: str, rng: random.Random) -> str:
    """`body` quoting one paragraph (or sentence) of `other`: a different article sharing a passage."""
    donors = [p for p in other.split("\n") if len(p.split()) >= 15] or [s for s in _SENTENCE.split(other)
                                                                        if len(s.split()) >= 10]
    passage = rng.choice(donors) if donors else other[:300]
    paragraphs = [p for p in body.split("\n") if p.strip()]
    paragraphs.insert(rng.randrange(0, len(paragraphs) + 1), passage)
    return "\n\n".join(paragraphs)


def _vocabulary(body: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(body.lower()) if len(w) >= 5)


def same_topic_pairs(bodies: Sequence[str], count: int) -> list[tuple[int, int]]:
    """The `count` pairs of different articles whose vocabularies (words of five letters or more) overlap most."""
    vocab = [_vocabulary(b) for b in bodies]
    scored = [(len(vocab[i] & vocab[j]) / max(1, len(vocab[i] | vocab[j])), i, j)
              for i, j in itertools.combinations(range(len(bodies)), 2)]
    scored.sort(reverse=True)
    return [(i, j) for _score, i, j in scored[:count]]


def demo_pairs(rng: random.Random) -> list[Pair]:
    """Pairs from the demo site (our text): its copy groups, shared-quote pairs, synthetic copies, and every
    pair of different stories as negatives (many share a topic: DPRK sanctions, missiles, THAAD)."""
    site = demosite.load_site()
    body = {a.key: a.body for a in site.articles}
    story = {a.key: a.copy_of or a.key for a in site.articles}
    pairs = [Pair(body[a], body[b], story[a] == story[b],
                  "demo-copy" if story[a] == story[b] else "demo-different")
             for a, b in itertools.combinations(sorted(body), 2)]
    for quoted in site.expected["shared_quote_pairs"]:
        first, second = quoted["articles"]
        pairs.append(Pair(body[first], body[second], False, "demo-shared-quote"))
    originals = [a for a in site.articles if a.copy_of is None]
    for article in originals:
        pairs.append(Pair(article.body, syndicated_copy(article.body, rng), True, "demo-syndicated"))
    for article, other in zip(originals, originals[1:] + originals[:1], strict=True):
        pairs.append(Pair(with_shared_passage(article.body, other.body, rng), other.body, False, "demo-shared-quote"))
    for first, second in SAME_EVENT:
        pairs.append(Pair(first, second, False, "written-same-event"))
        pairs.append(Pair(first, syndicated_copy(first, rng), True, "written-syndicated"))
    return pairs


def aeb_pairs(pages: Sequence[tuple[str, str]], rng: random.Random) -> list[Pair]:
    """Pairs from AEB pages given as (true body, our extracted body): truth against extraction and against a
    synthetic syndicated copy (positives); every pair of different pages, the most similar in vocabulary
    labelled same-topic, and pages quoting a passage of another (negatives)."""
    truths = [truth for truth, _extracted in pages]
    pairs = [Pair(truth, extracted, True, "aeb-extracted") for truth, extracted in pages]
    pairs += [Pair(truth, syndicated_copy(truth, rng), True, "aeb-syndicated") for truth in truths]
    topical = set(same_topic_pairs(truths, SAME_TOPIC_PAIRS))
    for i, j in itertools.combinations(range(len(truths)), 2):
        pairs.append(Pair(truths[i], truths[j], False, "aeb-same-topic" if (i, j) in topical else "aeb-different"))
    for i, j in sorted(topical)[:100]:
        pairs.append(Pair(with_shared_passage(truths[i], truths[j], rng), truths[j], False, "aeb-shared-passage"))
    return pairs


def build_pairs(aeb_pages: Sequence[tuple[str, str]] = ()) -> list[Pair]:
    """The whole labelled set: demo and written pairs always, AEB pairs when pages are given."""
    rng = random.Random(SEED)
    return demo_pairs(rng) + aeb_pairs(aeb_pages, rng)


def load_aeb_pages(corpus: Path | None = None, limit: int | None = None, min_words: int = 20
                   ) -> list[tuple[str, str]]:
    """(true body, our extracted body) of each AEB page whose truth has `min_words` words and whose page
    our extractor reads; raises aeb.CorpusMissingError when the corpus is absent."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import aeb

    from pipeline.extract import extract

    pages = []
    for page in aeb.load_corpus(aeb.corpus_dir(corpus), limit=limit):
        if len(page.truth.split()) < min_words:
            continue
        extraction = extract(page.html, page.url or "https://example.invalid/", min_words=min_words)
        if extraction.ok:
            pages.append((page.truth, extraction.body))
    return pages

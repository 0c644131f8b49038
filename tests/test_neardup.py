"""Near-duplicate signatures offline: shingles, stable MinHash across processes, band keys, the chosen settings
against the labelled pair set (demo and written text always, AEB when ../shared is present)."""

from __future__ import annotations

import multiprocessing

import pytest

from bench import dedup_bench, dedup_pairs
from pipeline import demosite, neardup
from pipeline.settings import Settings, SettingsError
from tests.conftest import AEB_DIR, require_shared


@pytest.fixture(scope="module")
def site() -> demosite.DemoSite:
    return demosite.load_site()


def test_shingles_ignore_case_punctuation_and_layout() -> None:
    assert neardup.shingles("North Korea, on Tuesday,\n\nfired A missile.", 3) == [
        b"north korea on", b"korea on tuesday", b"on tuesday fired", b"tuesday fired a", b"fired a missile"]
    assert neardup.shingles("Two words", 5) == [b"two words"]


def _band_keys_elsewhere(body: str) -> tuple[int, ...]:
    return neardup.sign(body).band_keys


def test_signatures_are_the_same_in_every_process(site: demosite.DemoSite) -> None:
    body = site.article("meridian-coal-transfers").body
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh interpreter: another worker
        remote = pool.apply(_band_keys_elsewhere, (body,))
    local = neardup.sign(body)
    assert remote == local.band_keys and len(local.band_keys) == neardup.DEFAULT_SCHEME.bands
    assert len(local.to_bytes()) == 4 * neardup.DEFAULT_SCHEME.permutations
    assert (neardup.from_bytes(local.to_bytes()) == local.minhash).all()


def test_demo_copies_match_and_shared_quotes_do_not(site: demosite.DemoSite) -> None:
    threshold = neardup.DEFAULT_SCHEME.threshold
    for group in site.expected["near_groups"] + site.expected["exact_groups"]:
        original = neardup.sign(site.article(group[0]).body)
        for key in group[1:]:
            copy = neardup.sign(site.article(key).body)
            assert set(original.band_keys) & set(copy.band_keys), f"{key} shares no band with {group[0]}"
            assert neardup.similarity(original.minhash, copy.minhash) >= threshold, key
    for pair in site.expected["shared_quote_pairs"]:
        first, second = (neardup.sign(site.article(key).body) for key in pair["articles"])
        assert neardup.similarity(first.minhash, second.minhash) < 0.2, pair["articles"]


def test_another_scheme_never_shares_band_keys() -> None:
    body = "The coast guard held a tanker off Yeosu on Friday over a suspected oil transfer at sea. " * 3
    default = neardup.sign(body)
    other = neardup.sign(body, neardup.Scheme(shingle_words=4))
    assert not set(default.band_keys) & set(other.band_keys)


def test_scheme_settings_are_checked_and_come_from_the_environment() -> None:
    with pytest.raises(ValueError, match="do not divide"):
        neardup.Scheme(permutations=64, bands=10)
    with pytest.raises(ValueError, match="threshold"):
        neardup.Scheme(threshold=0)
    with pytest.raises(SettingsError, match="NEWS_NEAR_DUPLICATE_THRESHOLD"):
        Settings.from_env({"NEWS_NEAR_DUPLICATE_THRESHOLD": "1.5"})
    settings = Settings.from_env({"NEWS_SHINGLE_WORDS": "4", "NEWS_MINHASH_PERMUTATIONS": "128",
                                  "NEWS_LSH_BANDS": "32", "NEWS_NEAR_DUPLICATE_THRESHOLD": "0.5"})
    assert neardup.scheme_for(settings) == neardup.Scheme(4, 128, 32, 0.5)
    assert neardup.scheme_for(Settings()) == neardup.DEFAULT_SCHEME


def test_synthetic_syndication_keeps_the_story_and_a_shared_passage_does_not_make_one(
        site: demosite.DemoSite) -> None:
    import random

    rng = random.Random(1)
    body = site.article("meridian-tanker-detained").body
    copy = dedup_pairs.syndicated_copy(body, rng)
    assert copy != body and copy.endswith(dedup_pairs.TAGLINES) and len(copy) > 0.8 * len(body)
    quoting = dedup_pairs.with_shared_passage(body, site.article("globe-iran-tanker-sanctions").body, rng)
    assert len(quoting.split("\n\n")) == len(body.split("\n\n")) + 1


def test_chosen_settings_reach_the_targets_on_our_own_text() -> None:
    pairs = dedup_pairs.build_pairs()
    result = dedup_bench.evaluate_pairs(pairs, neardup.DEFAULT_SCHEME)
    assert result["positives"] >= 50 and result["negatives"] >= 1000
    assert result["precision"] >= 0.99 and result["recall"] >= 0.95, result


def test_chosen_settings_reach_the_targets_on_aeb() -> None:
    require_shared(AEB_DIR)
    pages = dedup_pairs.load_aeb_pages(AEB_DIR)
    assert len(pages) >= 150
    result = dedup_bench.evaluate_pairs(dedup_pairs.build_pairs(pages), neardup.DEFAULT_SCHEME)
    assert result["positives"] >= 400 and result["negatives"] >= 15000
    assert result["precision"] >= 0.99 and result["recall"] >= 0.95, result

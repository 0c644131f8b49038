"""Tests for the newer parts of pipeline.topics: sentence and word-window proximity, lead weights, rule versions,
`topics check`, the candidate pruning of match(), hostile input, and `extract --explain`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import demosite
from pipeline.cli import main
from pipeline.settings import PROJECT_ROOT
from pipeline.topics import (
    DEFAULT_TAXONOMY,
    MAX_SCAN_CHARS,
    Taxonomy,
    TaxonomyError,
    check_taxonomy,
    load_taxonomy,
)
from tests.test_topics import CASES, write_taxonomy

GROUPS = {
    "korea": ["North Korea", "Pyongyang"],
    "sanctions": ["sanction*"],
    "russia": ["Russia"],
}


def taxonomy_of(tmp_path: Path, topics: list[dict[str, Any]], groups: dict[str, Any] | None = None,
                **top: Any) -> Taxonomy:
    return load_taxonomy(write_taxonomy(tmp_path, {"groups": groups or GROUPS, "topics": topics, **top}))


def ids(taxonomy: Taxonomy, title: str | None, body: str) -> list[str]:
    return [hit.topic_id for hit in taxonomy.match(title, body)]


def test_sentence_proximity_needs_both_groups_in_one_sentence(tmp_path: Path) -> None:
    taxonomy = taxonomy_of(tmp_path, [{"id": "k", "label": "K", "min_score": 1,
                                       "rule": {"near": ["korea", "sanctions"], "within": "sentence"}}])
    apart = "North Korea held a parade on Monday. Separately, the EU extended its sanctions."
    together = "The U.S. said North Korea evaded sanctions. Officials met in Seoul."

    assert ids(taxonomy, None, apart) == []
    explanation = taxonomy.explain(None, apart)[0]
    assert explanation.reasons == ["korea, sanctions never within the same sentence"]
    assert ids(taxonomy, None, together) == ["k"]  # "U.S." does not end a sentence
    hit = taxonomy.match(None, together)[0]
    assert hit.evidence["rule"] == "near[sentence](korea, sanctions)"
    [[start, end]] = hit.evidence["near"]
    assert together[start:end].strip() == "The U.S. said North Korea evaded sanctions."


def test_word_window_proximity_counts_words_between_the_terms(tmp_path: Path) -> None:
    taxonomy = taxonomy_of(tmp_path, [{"id": "k", "label": "K", "min_score": 1,
                                       "rule": {"near": ["korea", "sanctions"], "within": 5}}])
    close = "New sanctions on North Korea were announced."
    far = "North Korea, officials in several capitals said late on Friday, will face sanctions."

    assert ids(taxonomy, None, close) == ["k"]
    assert ids(taxonomy, None, far) == []
    assert ids(taxonomy, "North Korea sanctions", far) == ["k"]  # the title counts everywhere
    [[start, end]] = taxonomy.match(None, close)[0].evidence["near"]
    assert close[start:end].startswith("sanctions on North Korea")


@pytest.mark.parametrize(("rule", "fragment"), [
    ({"all": ["korea"], "within": "sentence"}, "only applies to a 'near'"),
    ({"near": ["korea", "sanctions"], "within": "page"}, "expected 'paragraph', 'sentence' or a number"),
    ({"near": ["korea", "sanctions"], "within": 0}, "from 1 to 200"),
    ({"near": ["korea", {"near": ["sanctions", "russia"]}]}, "cannot sit inside another 'near'"),
])
def test_bad_proximity_rules_are_refused(tmp_path: Path, rule: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TaxonomyError, match=fragment):
        taxonomy_of(tmp_path, [{"id": "k", "label": "K", "rule": rule}])


def test_a_wildcard_may_only_end_a_term(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="may only end the last word"):
        taxonomy_of(tmp_path, [{"id": "k", "label": "K", "rule": "korea"}], {"korea": ["North* Korea"]})


def test_lead_weight_sits_between_title_and_body(tmp_path: Path) -> None:
    taxonomy = taxonomy_of(tmp_path, [{"id": "k", "label": "K", "min_score": 3, "rule": "korea",
                                       "weights": {"title": 4, "lead": 3, "body": 1}}])
    assert [e.score for e in taxonomy.explain("North Korea", "")] == [4]
    assert [e.score for e in taxonomy.explain(None, "North Korea.\nMore.")] == [3]
    assert [e.score for e in taxonomy.explain(None, "Intro.\nNorth Korea.\nPyongyang.")] == [2]
    assert ids(taxonomy, None, "North Korea.\nMore.") == ["k"]
    assert ids(taxonomy, None, "Intro.\nNorth Korea.\nPyongyang.") == []


def test_rule_version_changes_only_for_the_edited_topic_and_its_ancestors(tmp_path: Path) -> None:
    topics = [
        {"id": "korea", "label": "Korea", "rule": "korea"},
        {"id": "korea-sanctions", "label": "Korea sanctions", "parent": "korea",
         "rule": {"near": ["korea", "sanctions"]}},
        {"id": "russia", "label": "Russia", "rule": {"all": ["russia", "sanctions"]}},
    ]
    base = taxonomy_of(tmp_path, topics).rule_versions
    described = taxonomy_of(tmp_path, [{**topics[0], "description": "new words"}, *topics[1:]]).rule_versions
    tightened = taxonomy_of(tmp_path, [topics[0], {**topics[1], "min_score": 3}, topics[2]]).rule_versions
    more_terms = taxonomy_of(tmp_path, topics, {**GROUPS, "russia": ["Russia", "Moscow"]}).rule_versions

    assert described == base  # a description is for readers; it decides nothing
    assert {t for t in base if tightened[t] != base[t]} == {"korea-sanctions", "korea"}
    assert {t for t in base if more_terms[t] != base[t]} == {"russia"}


def test_the_reviewed_taxonomy_passes_its_own_check() -> None:
    assert check_taxonomy(load_taxonomy()) == []


def test_check_reports_rules_that_never_match_overlaps_and_covered_terms(tmp_path: Path) -> None:
    groups = {
        "korea": ["North Korea"],
        "dprk_names": ["North Korea", "Pyongyang"],  # every term of korea is here too
        "sanctions": ["sanction*", "sanctions", "embargo"],
        "russia": ["Russia"],
    }
    topics = [
        {"id": "never", "label": "Never", "rule": {"all": ["korea"], "not": ["dprk_names"]}},
        {"id": "korea-sanctions", "label": "Korea sanctions", "rule": {"near": ["korea", "sanctions"]}},
        {"id": "dprk-sanctions", "label": "DPRK sanctions", "rule": {"all": ["dprk_names", "sanctions"]}},
        {"id": "russia-a", "label": "Russia A", "rule": {"all": ["russia", "sanctions"]}},
        {"id": "russia-b", "label": "Russia B", "rule": {"near": ["sanctions", "russia"]}},
        {"id": "zero", "label": "Zero", "rule": "russia", "weights": {"title": 0, "lead": 0, "body": 0}},
    ]
    findings = [str(f) for f in check_taxonomy(taxonomy_of(tmp_path, topics, groups))]

    assert "error: topic 'never': all(all(korea), not(dprk_names)) can never hold" in findings[0]
    assert any(f.startswith("error: topic 'zero': every field weight is 0") for f in findings)
    assert any("topic 'korea-sanctions': every text that satisfies its groups also satisfies topic "
               "'dprk-sanctions'" in f for f in findings)
    assert any("topic 'russia-a': same groups and logic as topic 'russia-b'" in f for f in findings)
    assert "warning: group 'sanctions': term 'sanctions' is already covered by 'sanction*'" in findings
    assert len(findings) == 5


def test_topics_check_command_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "check", str(DEFAULT_TAXONOMY)]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
    bad = write_taxonomy(tmp_path, {"groups": {"a": ["North Korea"], "b": ["North Korea", "Seoul"]},
                                    "topics": [{"id": "x", "label": "X", "rule": {"all": ["a"], "not": ["b"]}}]})
    assert main(["topics", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "error: topic 'x'" in out and "1 error(s)" in out
    broken = write_taxonomy(tmp_path, "groups: [unclosed\n", name="broken.yaml")
    assert main(["topics", "check", str(broken)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: broken.yaml: not valid YAML") and "\n" not in err


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_match_skips_no_topic_that_explain_finds(case: dict[str, Any]) -> None:
    taxonomy = load_taxonomy()
    explained = [e.topic_id for e in taxonomy.explain(case.get("title"), case["body"]) if e.matched]
    assert ids(taxonomy, case.get("title"), case["body"]) == explained


def test_hostile_input_is_tagged_safely_with_offsets_into_the_text() -> None:
    taxonomy = load_taxonomy()
    odd = ("\u0130stanbul \x00 \ud800 \u202eNorth Korea\u202c faces \u200bnew sanctions; "
           "N\u0308orth KOREA \U0001f600 DPRK\u00a0sanctions\u2028Pyongyang  \t sanctions")
    hits = taxonomy.match("İİ North Korea sanctions", odd)
    assert "dprk-sanctions" in [hit.topic_id for hit in hits]
    evidence = next(hit for hit in hits if hit.topic_id == "dprk-sanctions").evidence
    for group in evidence["groups"].values():
        for match in group["matches"]:
            text = odd if match["field"] == "body" else "İİ North Korea sanctions"
            word = text[match["start"]:match["end"]]
            assert word.replace("\u00a0", " ").casefold().startswith(match["term"].rstrip("*").casefold()[:4])
    json.dumps(evidence)

    huge = "North Korea sanctions. " * (MAX_SCAN_CHARS // 10)
    hits = taxonomy.match(None, huge)
    assert "dprk-sanctions" in [hit.topic_id for hit in hits]
    offsets = [m["end"] for hit in hits for g in hit.evidence["groups"].values() for m in g["matches"]]
    assert max(offsets) <= MAX_SCAN_CHARS
    assert taxonomy.match("\x00", "\x00" * 1000) == []


def test_the_reviewed_taxonomy_keeps_sanctions_regimes_apart() -> None:
    taxonomy = load_taxonomy()
    russia = ("EU adopts new sanctions on Russia",
              "The European Union adopted new sanctions on Russian banks and the Kremlin's shadow fleet.")
    iran = ("US sanctions Iranian oil network", "Washington imposed sanctions on Tehran's oil exporters.")
    korea_mission = ("North Korea tests missile", "North Korea fired a ballistic missile into the sea.")
    assert ids(taxonomy, *russia) == ["russia-sanctions"]
    assert ids(taxonomy, *iran) == ["iran-sanctions"]
    assert ids(taxonomy, *korea_mission) == ["dprk-nuclear-missile", "korean-peninsula"]


def test_extract_explain_shows_the_rule_terms_offsets_snippet_and_stored_evidence(tmp_path: Path) -> None:
    page = demosite.render_page(
        "hrh", title="Seoul widens sanctions list over North Korean oil smuggling", author="Ko Eun-bi",
        published_at=demosite.load_site().articles[0].published_at, canonical_url="https://hrh.example/a1",
        paragraphs=["South Korea added six ships and two Pyongyang trading firms to its sanctions list on Monday, "
                    "accusing them of ship-to-ship transfers of refined petroleum to North Korea.",
                    "The ministry said the measures complement United Nations Security Council sanctions."])
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    command = [sys.executable, "-m", "pipeline", "extract", str(path), "--explain"]
    text_out = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True)
    lines = text_out.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("  + DPRK sanctions")))
    assert lines[at + 1].startswith("      rule: any(near(dprk, any(sanctions, sanction_measures)), near[sentence]")
    assert any(line.startswith("      dprk: ") and "(at title" in line for line in lines[at:at + 6])
    assert any(line.startswith("      snippet (") for line in lines[at:at + 12])
    assert any(line.startswith("  - THAAD deployment") for line in lines)

    done = subprocess.run([*command, "--json"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                          check=True)
    report = json.loads(done.stdout)
    taxonomy = load_taxonomy()
    stored = taxonomy.evidence(report["title"], report["body"])
    by_id = {topic["topic_id"]: topic for topic in report["topics"]}
    assert by_id["dprk-sanctions"]["evidence"] == stored["dprk-sanctions"]
    assert by_id["thaad"]["evidence"] is None and by_id["thaad"]["reasons"]


def test_labelled_set_is_large_and_has_hard_negatives() -> None:
    data = yaml.safe_load((PROJECT_ROOT / "bench" / "data" / "topics_labelled.yaml").read_text(encoding="utf-8"))
    items = data["items"]
    assert len(items) >= 150
    assert len({item["id"] for item in items}) == len(items)
    kinds = {item.get("kind") for item in items}
    assert {"other-sanctions", "dprk-not-sanctions", "south-korea-economy", "korea-other-sense"} <= kinds

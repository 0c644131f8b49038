"""Tests for pipeline.topics: rules, scoring, evidence and taxonomy validation on texts written for them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.models import TopicHit
from pipeline.topics import (
    DEFAULT_TAXONOMY,
    SNIPPET_CHARS,
    Taxonomy,
    TaxonomyError,
    Topic,
    load_taxonomy,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "topics"
SEED_ARTICLE = (REPO_ROOT / ".." / "shared" / "examples" / "seed-article.txt").resolve()
MIN_FIXTURES = 40
MAX_PARAGRAPHS = 4

EXPECTED_TOPICS = {
    "korean-peninsula": ("Korean Peninsula", None),
    "dprk-sanctions": ("DPRK sanctions", "korean-peninsula"),
    "dprk-nuclear-missile": ("DPRK nuclear and missile programme", "korean-peninsula"),
    "dprk-diplomacy": ("DPRK diplomacy and summits", "korean-peninsula"),
    "dprk-human-rights": ("DPRK human rights", "korean-peninsula"),
    "thaad": ("THAAD deployment", "korean-peninsula"),
    "us-china-relations": ("US–China relations", None),
    "russia-sanctions": ("Russia sanctions", None),
    "iran-sanctions": ("Iran sanctions", None),
}

# A small taxonomy for rule mechanics, independent of the reviewed one.
MINI_TAXONOMY = {
    "groups": {
        "korea": ["North Korea", "Pyongyang"],
        "peninsula": ["Korea"],
        "sanctions": ["sanction*", "embargo"],
        "trade": ["embargo", "tariff*"],
        "un": {"case_sensitive": ["UN"]},
        "us": {"terms": ["United States"], "case_sensitive": ["US"]},
        "russia": ["Russia"],
    },
    "topics": [
        {"id": "un-sanctions", "label": "UN sanctions", "rule": {"all": ["un", "sanctions"]}},
        {
            "id": "korea-not-russia",
            "label": "Korea without Russia",
            "rule": {"all": ["korea"], "not": ["russia"]},
        },
        {
            "id": "korea-near-sanctions",
            "label": "Korea near sanctions",
            "rule": {"near": ["korea", "sanctions"]},
        },
        {"id": "peninsula", "label": "Peninsula", "rule": "peninsula"},
        {"id": "trade", "label": "Trade", "rule": {"any": ["trade"]}},
        {"id": "america", "label": "America", "rule": {"any": ["us"]}},
    ],
}


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        cases.extend(yaml.safe_load(path.read_text(encoding="utf-8")))
    return cases


CASES = load_cases()
CASES_BY_NAME = {case["name"]: case for case in CASES}


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


@pytest.fixture
def mini(tmp_path: Path) -> Taxonomy:
    return load_taxonomy(write_taxonomy(tmp_path, MINI_TAXONOMY))


def write_taxonomy(tmp_path: Path, data: dict[str, Any] | str, name: str = "taxonomy.yaml") -> Path:
    path = tmp_path / name
    text = data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def hit_ids(hits: list[TopicHit]) -> list[str]:
    return [hit.topic_id for hit in hits]


def hit_for(hits: list[TopicHit], topic_id: str) -> TopicHit:
    return next(hit for hit in hits if hit.topic_id == topic_id)


def terms_of(taxonomy: Taxonomy, topic_id: str, title: str | None, body: str) -> dict[str, dict[str, int]]:
    return next(e.terms for e in taxonomy.explain(title, body) if e.topic_id == topic_id)


def field_text(case: dict[str, Any], field_name: str) -> str:
    return (case.get("title") or "") if field_name == "title" else case["body"]


# The reviewed taxonomy and the fixture set


def test_taxonomy_has_the_agreed_ids_labels_and_parents(taxonomy: Taxonomy) -> None:
    found = {topic.id: (topic.label, topic.parent) for topic in taxonomy.topics}
    assert found == EXPECTED_TOPICS
    assert all(isinstance(topic, Topic) and topic.description for topic in taxonomy.topics)


def test_default_taxonomy_is_the_packaged_file() -> None:
    assert DEFAULT_TAXONOMY == REPO_ROOT / "pipeline" / "taxonomy.yaml"
    assert DEFAULT_TAXONOMY.read_text(encoding="utf-8").startswith("#")  # a header for reviewers


def test_fixture_set_is_large_named_and_short() -> None:
    names = [case["name"] for case in CASES]
    assert len(CASES) >= MIN_FIXTURES
    assert len(names) == len(set(names))
    for case in CASES:
        assert set(case["expect"]) <= EXPECTED_TOPICS.keys(), case["name"]
        paragraphs = [p for p in case["body"].split("\n\n") if p.strip()]
        assert 1 <= len(paragraphs) <= MAX_PARAGRAPHS, case["name"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_fixture_text_gets_exactly_the_expected_topics(taxonomy: Taxonomy, case: dict[str, Any]) -> None:
    hits = taxonomy.match(case.get("title"), case["body"])
    why = {
        e.topic_id: (e.score, e.reasons, e.terms) for e in taxonomy.explain(case.get("title"), case["body"])
    }
    assert hit_ids(hits) == sorted(case["expect"]), why


# Evidence


def test_every_hit_has_json_evidence_whose_offsets_point_at_whole_words(taxonomy: Taxonomy) -> None:
    checked = 0
    for case in CASES:
        for hit in taxonomy.match(case.get("title"), case["body"]):
            evidence = hit.evidence
            assert json.loads(json.dumps(evidence)) == evidence
            assert evidence["rule_version"] == taxonomy.rule_versions[hit.topic_id]
            assert hit.label == EXPECTED_TOPICS[hit.topic_id][0]
            for name, group in evidence["groups"].items():
                assert sum(group["terms"].values()) >= len(group["matches"]), name
                for match in group["matches"]:
                    text = field_text(case, match["field"])
                    start, end = match["start"], match["end"]
                    word = text[start:end]
                    assert match["term"] in group["terms"], (case["name"], name, match)
                    assert word and word == word.strip(), (case["name"], name, word)
                    assert start == 0 or not text[start - 1].isalnum(), (case["name"], word)
                    assert end == len(text) or not text[end].isalnum(), (case["name"], word)
                    checked += 1
            for start, end in evidence["near"] or []:
                assert 0 <= start < end <= len(case["body"])
                assert "\n" not in case["body"][start:end]
            snippet = evidence["snippet"]
            if snippet is not None and snippet["field"] == "body" and evidence["near"]:
                assert any(start <= snippet["start"] < end for start, end in evidence["near"])
            if snippet is not None:
                text = field_text(case, snippet["field"])
                assert len(snippet["text"]) <= SNIPPET_CHARS
                assert " ".join(text[snippet["start"] : snippet["end"]].split()) in snippet["text"]
                assert snippet["group"] in evidence["groups"]
    assert checked > 100


def test_evidence_lists_terms_counts_offsets_and_snippet(taxonomy: Taxonomy) -> None:
    case = CASES_BY_NAME["dprk-sanctions-ship-to-ship"]
    title, body = case["title"], case["body"]
    hit = hit_for(taxonomy.match(title, body), "dprk-sanctions")
    groups = hit.evidence["groups"]

    assert hit.evidence["rule"] == (
        "any(near(dprk, any(sanctions, sanction_measures)), "
        "near[sentence](dprk, any(sanctions, sanction_measures), not(russia, iran, other_regimes)))"
    )
    assert groups["dprk"]["terms"] == {"North Korea": 1, "Pyongyang": 1}
    assert groups["sanctions"]["terms"] == {
        "blacklist*": 1,
        "Office of Foreign Assets Control": 1,
        "sanction*": 1,
        "ship-to-ship transfer*": 1,
    }
    assert "sanction_measures" not in groups  # nothing matched there
    first = groups["sanctions"]["matches"][0]
    assert (first["field"], title[first["start"] : first["end"]]) == ("title", "blacklists")
    assert first["term"] == "blacklist*"
    assert [(body[m["start"] : m["end"]], m["term"]) for m in groups["sanctions"]["matches"][1:]] == [
        ("Office of Foreign Assets Control", "Office of Foreign Assets Control"),
        ("sanctions", "sanction*"),
        ("ship-to-ship transfers", "ship-to-ship transfer*"),
    ]
    assert [body[m["start"] : m["end"]] for m in groups["dprk"]["matches"]] == ["North Korea", "Pyongyang"]
    assert groups["dprk"]["score"] == 2.5  # 1 lead hit x 1.5 + 1 body hit x 1
    assert groups["sanctions"]["score"] == 6.5  # 1 title hit x 2 + 3 lead hits x 1.5
    # the weakest required group, in the paragraphs where the ideas meet (2.5) and in the one sentence that
    # names both (1.5)
    assert hit.score == 4.0
    paragraphs = body.split("\n\n")
    assert [body[s:e] for s, e in hit.evidence["near"]] == paragraphs[:2]  # the third names no DPRK term

    snippet = hit.evidence["snippet"]
    assert snippet["group"] == "dprk"  # the weakest group is the one to check
    assert snippet["field"] == "body"
    assert body[snippet["start"] : snippet["end"]] == "North Korea"
    assert snippet["text"].endswith("bound for North Korea.")
    assert hit.evidence["via_children"] == []


def test_curly_apostrophes_and_hyphenated_names_match(taxonomy: Taxonomy) -> None:
    curly = CASES_BY_NAME["dprk-sanctions-curly-apostrophe"]
    terms = terms_of(taxonomy, "dprk-sanctions", curly["title"], curly["body"])
    assert terms["dprk"]["Democratic People's Republic of Korea"] == 2

    hyphen = CASES_BY_NAME["dprk-nuclear-kim-hyphenated-name"]
    terms = terms_of(taxonomy, "dprk-nuclear-missile", hyphen["title"], hyphen["body"])
    assert terms["dprk"]["Kim Jong Un"] == 2


def test_phrases_match_across_spaces_hyphens_and_line_breaks(mini: Taxonomy) -> None:
    body = "North  Korea and North-Korea and North\nKorea, but not NorthKorea."
    assert terms_of(mini, "korea-not-russia", None, body)["korea"] == {"North Korea": 3}


def test_wildcard_covers_inflections_but_not_other_words(mini: Taxonomy) -> None:
    body = "A sanction, two sanctions, one sanctioned firm, more sanctioning; unsanctioned sanctity."
    assert terms_of(mini, "un-sanctions", None, body)["sanctions"] == {"sanction*": 4}


def test_case_sensitive_acronyms_ignore_lower_case_words(mini: Taxonomy) -> None:
    body = "The UN said un, Un and UNESCO differ; tell us, Us and the US, not USB."
    terms = terms_of(mini, "un-sanctions", None, body)
    assert terms["un"] == {"UN": 1}
    assert terms_of(mini, "america", None, body)["us"] == {"US": 1}


def test_reviewed_acronyms_ignore_pronouns_and_words_containing_them(taxonomy: Taxonomy) -> None:
    body = "Let us be clear: the dprk tag and an unusual union vote are not news. Thaad is a name."
    explanations = taxonomy.explain("Tell us more", body)
    assert all(not any(e.terms.values()) for e in explanations if e.topic_id != "korean-peninsula")
    assert terms_of(taxonomy, "us-china-relations", None, "The US and us.")["us"] == {"US": 1}
    assert terms_of(taxonomy, "dprk-sanctions", None, "DPRK, dprk, Dprk.")["dprk"] == {"DPRK": 1}


def test_shorter_term_inside_a_longer_match_counts_for_its_own_group(mini: Taxonomy) -> None:
    body = "North Korea faces an embargo."
    assert terms_of(mini, "peninsula", None, body)["peninsula"] == {"Korea": 1}
    assert terms_of(mini, "korea-not-russia", None, body)["korea"] == {"North Korea": 1}
    assert terms_of(mini, "trade", None, body)["trade"] == {"embargo": 1}  # same term, two groups
    assert hit_ids(mini.match(None, body)) == [
        "korea-near-sanctions",
        "korea-not-russia",
        "peninsula",
        "trade",
    ]


# Scoring and rules


def test_a_title_match_weighs_twice_a_body_match_and_the_lead_in_between(taxonomy: Taxonomy) -> None:
    sentence = "THAAD battery moves to Seongju"
    in_title = next(e for e in taxonomy.explain(sentence, "Residents protested.") if e.topic_id == "thaad")
    in_lead = next(
        e for e in taxonomy.explain(None, f"{sentence}. Residents protested.") if e.topic_id == "thaad"
    )
    in_body = next(
        e for e in taxonomy.explain(None, f"Residents protested.\n{sentence}.") if e.topic_id == "thaad"
    )

    # the 'all' rule and the same-sentence rule both count: title 2 + 2, lead 1.5 + 1.5, body 1 + 1
    assert in_title.score == 2 * in_body.score == 4.0
    assert in_lead.score == 3.0
    assert in_title.matched and in_lead.matched and not in_body.matched
    assert in_body.reasons == ["score 2 below min_score 2.5"]


def test_a_passing_mention_in_one_paragraph_is_not_enough(taxonomy: Taxonomy) -> None:
    case = CASES_BY_NAME["russia-sanctions-package-names-north-korea-once"]
    explanation = {e.topic_id: e for e in taxonomy.explain(case["title"], case["body"])}

    assert explanation["russia-sanctions"].matched
    dprk = explanation["dprk-sanctions"]
    assert not dprk.matched
    assert dprk.terms["dprk"] == {"North Korea": 1}
    assert "score 1 below min_score 2.5" in dprk.reasons


def test_near_needs_both_groups_in_one_paragraph(taxonomy: Taxonomy) -> None:
    apart = (
        "North Korea opened a hospital in Pyongyang on Monday.\n\n"
        "The weather was mild.\n\n"
        "Separately, new sanctions on shipping firms were announced, the third round of sanctions this year."
    )
    explanation = next(e for e in taxonomy.explain(None, apart) if e.topic_id == "dprk-sanctions")
    assert not explanation.matched
    assert any("same paragraph" in reason for reason in explanation.reasons)

    together = apart.replace("\n\nThe weather was mild.\n\n", " ")
    assert "dprk-sanctions" in hit_ids(taxonomy.match(None, together))


def test_near_counts_only_matches_in_paragraphs_where_the_items_meet(taxonomy: Taxonomy) -> None:
    case = CASES_BY_NAME["us-china-truce-in-one-paragraph-of-an-economy-report"]
    explanation = next(
        e for e in taxonomy.explain(case["title"], case["body"]) if e.topic_id == "us-china-relations"
    )

    assert explanation.terms["us"] == {"American": 1, "Washington": 1}  # two in the text ...
    assert explanation.terms["bilateral"] == {"tariff*": 1, "meeting*": 1}
    # ... but one each in the only paragraph (and sentence) where US, China and trade meet: 1 + 1
    assert explanation.score == 2.0
    assert explanation.reasons == ["score 2 below min_score 2.5"]


def test_the_title_counts_as_part_of_every_paragraph(taxonomy: Taxonomy) -> None:
    body = "Pyongyang rejected the move.\n\nShipping firms said the sanctions would hurt trade."
    assert "dprk-sanctions" not in hit_ids(taxonomy.match(None, body))
    assert "dprk-sanctions" in hit_ids(taxonomy.match("North Korea condemns new sanctions", body))


def test_explain_covers_every_topic_and_names_the_missing_group(taxonomy: Taxonomy) -> None:
    case = CASES_BY_NAME["russia-sanctions-treasury-banks"]
    explanations = taxonomy.explain(case["title"], case["body"])

    assert [e.topic_id for e in explanations] == sorted(EXPECTED_TOPICS)
    iran = next(e for e in explanations if e.topic_id == "iran-sanctions")
    assert iran.missing == ["iran"]
    assert iran.reasons == ["group 'iran' not found"]
    assert iran.terms["sanctions"] == {"sanction*": 2}
    russia = next(e for e in explanations if e.topic_id == "russia-sanctions")
    assert russia.matched and russia.reasons == [] and russia.missing == []


def test_explanations_serialise_with_a_one_line_summary(taxonomy: Taxonomy) -> None:
    case = CASES_BY_NAME["thaad-launchers-arrive-in-seongju"]
    explained = {e.topic_id: e.as_dict() for e in taxonomy.explain(case["title"], case["body"])}

    assert json.loads(json.dumps(explained)) == explained
    assert explained["thaad"]["summary"].startswith(
        "score 9; thaad: THAAD x2, Terminal High Altitude Area Defense x1"
    )
    assert explained["korean-peninsula"]["summary"].startswith("score 9; via thaad; dprk: North Korea x1")
    assert (
        explained["iran-sanctions"]["summary"]
        == "group 'iran' not found; none of sanctions, sanction_measures found"
    )


def test_explain_reports_the_not_group_that_fired(mini: Taxonomy) -> None:
    explanation = next(
        e
        for e in mini.explain(None, "North Korea and Russia signed a deal.")
        if e.topic_id == "korea-not-russia"
    )
    assert not explanation.matched
    assert explanation.excluded_by == ["russia"]
    assert explanation.reasons == ["excluded by russia"]
    assert "korea-not-russia" in hit_ids(mini.match(None, "North Korea signed a deal."))


def test_parent_topic_is_assigned_through_its_child(taxonomy: Taxonomy) -> None:
    case = CASES_BY_NAME["thaad-launchers-arrive-in-seongju"]
    hits = taxonomy.match(case["title"], case["body"])
    parent, child = hit_for(hits, "korean-peninsula"), hit_for(hits, "thaad")

    assert parent.evidence["via_children"] == ["thaad"]
    assert parent.evidence["rule"] is None  # one mention of North Korea is below its own min_score
    assert parent.score == child.score


def test_parent_without_a_rule_follows_its_children(tmp_path: Path) -> None:
    data = {
        "groups": {"korea": ["North Korea"], "sanctions": ["sanction*"]},
        "topics": [
            {"id": "korea", "label": "Korea"},
            {
                "id": "korea-sanctions",
                "label": "Korea sanctions",
                "parent": "korea",
                "rule": {"all": ["korea", "sanctions"]},
            },
        ],
    }
    taxonomy = load_taxonomy(write_taxonomy(tmp_path, data))

    assert hit_ids(taxonomy.match(None, "North Korea faces sanctions.")) == ["korea", "korea-sanctions"]
    assert taxonomy.match(None, "North Korea held a parade.") == []
    parent = next(e for e in taxonomy.explain(None, "North Korea held a parade.") if e.topic_id == "korea")
    assert parent.reasons == ["no rule of its own and no child topic matched"]


def test_match_is_sorted_by_topic_id_and_handles_empty_text(taxonomy: Taxonomy) -> None:
    case = CASES_BY_NAME["us-china-summit-on-korean-sanctions"]
    ids = hit_ids(taxonomy.match(case["title"], case["body"]))
    assert ids == sorted(ids) and len(ids) == 5
    assert taxonomy.match(None, "") == []
    assert len(taxonomy.explain("", "")) == len(EXPECTED_TOPICS)


# Loading and versions


def test_version_is_a_hash_of_the_file_and_changes_with_it(tmp_path: Path, taxonomy: Taxonomy) -> None:
    raw = DEFAULT_TAXONOMY.read_bytes()
    assert taxonomy.version == hashlib.sha256(raw).hexdigest()[:16]

    copy = tmp_path / "taxonomy.yaml"
    copy.write_bytes(raw)
    assert load_taxonomy(copy).version == taxonomy.version
    copy.write_bytes(raw + b"\n# reviewed again\n")
    changed = load_taxonomy(copy)
    assert changed.version != taxonomy.version
    assert changed.topics == taxonomy.topics
    assert changed.rule_versions == taxonomy.rule_versions  # a comment changes no rule
    hits = changed.match("North Korea fires ICBM", "North Korea launched an ICBM.")
    assert {hit.evidence["rule_version"] for hit in hits} == {changed.rule_versions[h.topic_id] for h in hits}


def _topics_with(rule: Any = None, **fields: Any) -> dict[str, Any]:
    topic = {"id": "bad-topic", "label": "Bad topic", "rule": rule or {"all": ["korea"]}, **fields}
    return {"groups": {"korea": ["North Korea"]}, "topics": [topic]}


INVALID_TAXONOMIES = {
    "unknown group": (
        _topics_with({"all": ["korea", "sanktions"]}),
        ["topic 'bad-topic'", "rule.all[1]", "unknown group 'sanktions'"],
    ),
    "empty alias list": (
        {
            "groups": {"korea": ["North Korea"], "empty": []},
            "topics": _topics_with({"any": ["korea", "empty"]})["topics"],
        },
        ["group 'empty'", "used by topic 'bad-topic'", "empty alias list"],
    ),
    "bad rule key": (
        _topics_with({"every": ["korea"]}),
        ["topic 'bad-topic'", "unknown rule key 'every'"],
    ),
    "empty rule list": (_topics_with({"any": []}), ["topic 'bad-topic'", "rule.any", "non-empty list"]),
    "rule with only not": (_topics_with({"not": ["korea"]}), ["topic 'bad-topic'", "outside 'not'"]),
    "missing label": (_topics_with(label=""), ["topic 'bad-topic'", "label"]),
    "unknown field": (_topics_with(**{"min-score": 2}), ["topic 'bad-topic'", "unknown field 'min-score'"]),
    "negative min_score": (_topics_with(min_score=-1), ["topic 'bad-topic'", "min_score"]),
    "bad weight": (_topics_with(weights={"headline": 3}), ["topic 'bad-topic'", "weights", "'headline'"]),
    "unknown parent": (
        _topics_with(parent="nowhere"),
        ["topic 'bad-topic'", "parent: unknown topic 'nowhere'"],
    ),
    "own parent": (_topics_with(parent="bad-topic"), ["topic 'bad-topic'", "cycle"]),
    "bad id": (
        {
            "groups": {"korea": ["North Korea"]},
            "topics": [{"id": "Bad Topic", "label": "x", "rule": "korea"}],
        },
        ["topics[0]", "id"],
    ),
    "duplicate id": (
        {"groups": {"korea": ["North Korea"]}, "topics": [_topics_with()["topics"][0]] * 2},
        ["topic 'bad-topic'", "more than one topic"],
    ),
    "no rule and no children": (
        {"groups": {"korea": ["North Korea"]}, "topics": [{"id": "bad-topic", "label": "Bad topic"}]},
        ["topic 'bad-topic'", "rule: missing"],
    ),
    "short wildcard": (
        {"groups": {"korea": ["N*"]}, "topics": _topics_with()["topics"]},
        ["group 'korea'", "wildcard needs 3+"],
    ),
    "star inside a word": (
        {"groups": {"korea": ["Nor*th Korea"]}, "topics": _topics_with()["topics"]},
        ["group 'korea'", "'*' may only end a word"],
    ),
    "term of hyphens only": (
        {"groups": {"korea": ["North Korea", "--"]}, "topics": _topics_with()["topics"]},
        ["group 'korea'", "has no words"],
    ),
    "unquoted number": (
        {"groups": {"korea": ["North Korea", 2397]}, "topics": _topics_with()["topics"]},
        ["group 'korea'", "2397", "quote numbers"],
    ),
    "duplicate term": (
        {"groups": {"korea": ["North Korea", "north  korea"]}, "topics": _topics_with()["topics"]},
        ["group 'korea'", "duplicate term"],
    ),
    "unknown top-level key": ({**_topics_with(), "version": 3}, ["file", "unknown field 'version'"]),
    "not a mapping": ("- just\n- a list\n", ["file", "mapping"]),
    "not YAML": ("groups: [unclosed\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("name", list(INVALID_TAXONOMIES))
def test_invalid_taxonomy_raises_a_clear_taxonomy_error(tmp_path: Path, name: str) -> None:
    data, fragments = INVALID_TAXONOMIES[name]
    path = write_taxonomy(tmp_path, data, name="broken.yaml")
    with pytest.raises(TaxonomyError) as caught:
        load_taxonomy(path)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith("broken.yaml: ")
    for fragment in fragments:
        assert fragment in message


# The real seed article (kept outside the repository)


def test_seed_article_is_tagged_dprk_sanctions_and_nuclear_but_not_thaad(taxonomy: Taxonomy) -> None:
    if not SEED_ARTICLE.is_file():
        pytest.skip(f"seed article not found at {SEED_ARTICLE} (it lives in the shared folder, not the repo)")
    lines = [line.strip() for line in SEED_ARTICLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    _section, title, _byline, *paragraphs = lines  # the title apart, as extraction delivers it
    body = "\n".join(paragraphs)
    expected = ["dprk-diplomacy", "dprk-nuclear-missile", "dprk-sanctions", "korean-peninsula", "us-china-relations"]

    hits = taxonomy.match(title, body)
    assert hit_ids(hits) == expected
    # as one undivided text: the same, except that "diplomatic" next to North Korea is now one body mention
    # instead of a headline
    assert hit_ids(taxonomy.match(None, "\n".join(lines))) == [t for t in expected if t != "dprk-diplomacy"]
    sanctions = hit_for(hits, "dprk-sanctions")
    assert sanctions.evidence["snippet"]["group"] == "sanctions"
    assert (
        "sanctions against the Democratic People's Republic of Korea" in sanctions.evidence["snippet"]["text"]
    )
    thaad = next(e for e in taxonomy.explain(title, body) if e.topic_id == "thaad")
    assert thaad.terms["thaad"] == {"THAAD": 1}
    assert thaad.reasons == ["score 2 below min_score 2.5"]  # one passing mention does not earn the topic

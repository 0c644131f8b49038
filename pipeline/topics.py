"""Topic tagging: explainable rules from a reviewed taxonomy file, matched in one Aho-Corasick pass."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import ahocorasick
import yaml

from pipeline.models import TopicHit

LOGGER = logging.getLogger(__name__)

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")
VERSION_CHARS = 16
FIELDS = ("title", "lead", "body")  # the lead is the body's first paragraph; its weight defaults to the body's
DEFAULT_WEIGHTS = {"title": 2.0, "body": 1.0}
DEFAULT_MIN_SCORE = 1.0
MAX_OFFSETS = 5
SNIPPET_CHARS = 200
MIN_WILDCARD_STEM = 3
MAX_WITHIN_WORDS = 200
# hostile input: a body longer than this is tagged on its first MAX_SCAN_CHARS characters only
MAX_SCAN_CHARS = 300_000
TITLE_ONLY = -1  # unit index that no body hit has, so only title hits count

PARAGRAPH = "paragraph"
SENTENCE = "sentence"

FILE_KEYS = ("groups", "topics", "defaults")
DEFAULTS_KEYS = ("min_score", "weights")
GROUP_KEYS = ("terms", "case_sensitive")
TOPIC_KEYS = ("id", "label", "description", "parent", "rule", "min_score", "weights")
RULE_KEYS = ("all", "any", "not", "near", "within")

TOPIC_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
GROUP_NAME = re.compile(r"[a-z][a-z0-9_]*")
TERM_WORD_BREAK = re.compile(r"[\s\-\u2010\u2011]+")
APOSTROPHE_CHARS = "'\u2018\u2019"
WORD_CHARS = re.compile(r"\w+")
WORD_TAIL = re.compile(r"\w*")
SPACE_RUN = re.compile(r"  +")
LINE_BREAK = re.compile(r"\n")
# a sentence ends at . ! ? (and closing quotes) before white space, except after an initial ("N. Korea",
# "U.S.") or a common title; a line break also ends one
SENTENCE_BREAK = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+|\n")
NOT_A_SENTENCE_END = re.compile(r"(?:^|[\s.])(?:[A-Z]|Mr|Ms|Mrs|Dr|St|Gen|Sen|Rep|Gov|No)$")
# white space, hyphens and curly apostrophes are replaced one for one, so that offsets stay the same: the
# common ones with str.replace, the rare ones with a regex only when the text has any (str.translate is
# several times slower on text that is not pure ASCII)
COMMON_REPLACEMENTS = (("\n", " "), ("\t", " "), ("\r", " "), ("-", " "), ("\xa0", " "), ("\u2010", " "),
                       ("\u2011", " "), ("\u2018", "'"), ("\u2019", "'"))
RARE_SPACES = re.compile("[" + "".join(
    re.escape(chr(c)) for c in range(0x3001) if chr(c).isspace() and chr(c) not in " \n\t\r\xa0") + "]")


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message names the topic or group and the field."""


@dataclass(frozen=True)
class Topic:
    """One topic as readers see it; rule_version is a hash of everything that decides it."""

    id: str
    label: str
    description: str
    parent: str | None
    rule: str = ""
    rule_version: str = ""


@dataclass(frozen=True)
class TopicExplanation:
    """Why one topic did or did not match a text."""

    topic_id: str
    label: str
    matched: bool
    score: float
    min_score: float
    terms: dict[str, dict[str, int]]  # every group the rule names -> matched alias -> count
    missing: list[str] = field(default_factory=list)  # required groups without a match
    excluded_by: list[str] = field(default_factory=list)  # 'not' items that fired
    reasons: list[str] = field(default_factory=list)  # one line per cause of a miss
    via_children: list[str] = field(default_factory=list)  # matched child topics
    rule: str = ""

    @property
    def summary(self) -> str:
        """One line for people: the score and the terms that earned the topic, or why it missed."""
        if not self.matched:
            return "; ".join(self.reasons)
        found = [
            f"{group}: " + ", ".join(f"{term} x{count}" for term, count in terms.items())
            for group, terms in self.terms.items()
            if terms
        ]
        via = [f"via {', '.join(self.via_children)}"] if self.via_children else []
        return "; ".join([f"score {self.score:g}", *via, *found])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the one-line summary."""
        return {**asdict(self), "summary": self.summary}


class Taxonomy:
    """A compiled taxonomy: topics, their rules, and the version of the file they came from."""

    def __init__(
        self,
        version: str,
        topics: list[Topic],
        rules: dict[str, _TopicRule],
        groups: dict[str, list[tuple[str, bool]]],
    ) -> None:
        self.version = version
        self.content = ""  # the file's text, recorded in taxonomy_versions
        self.topics = topics
        self.groups = groups
        self._rules = rules
        used = {g for rule in rules.values() for g in rule.all_groups}
        self._matcher = _Matcher({name: terms for name, terms in groups.items() if name in used})
        self._ancestors = {topic.id: _ancestors(topic.id, rules) for topic in topics}
        self._order = sorted(rules)
        # each topic is looked at only when the groups its rule cannot do without all occur
        self._needs: dict[str, frozenset[str]] = {}
        self._by_group: dict[str, list[str]] = {}
        users = Counter(g for rule in rules.values() for g in rule.groups)
        for tid in self._order:
            rule = rules[tid].rule
            if rule is None:
                continue
            needs = self._needs[tid] = _required(rule)
            if needs:  # filed under its most specific required group, looked at when that group occurs
                self._by_group.setdefault(min(sorted(needs), key=users.__getitem__), []).append(tid)
            else:
                for group in rules[tid].groups:
                    self._by_group.setdefault(group, []).append(tid)
        # a rule with min_score 0 might hold on a text without any of its terms, so it is always evaluated
        self._always = [tid for tid in self._order if rules[tid].rule is not None and rules[tid].min_score <= 0]

    @property
    def rule_versions(self) -> dict[str, str]:
        """Topic id -> hash of its rule, the terms of its groups, its weights, threshold and child rules."""
        return {topic.id: topic.rule_version for topic in self.topics}

    def match(self, title: str | None, body: str) -> list[TopicHit]:
        """Topics whose rule holds with score >= min_score, and their parents, sorted by topic id.

        Evidence (JSON-ready) holds: rule_version; rule, the rule that held (None for a parent earned
        through its children); min_score; groups, per required group that matched: score (the points
        that counted; over the whole text where the rule counts the group under two kinds of unit), terms
        (alias -> count, whole text) and matches (the first MAX_OFFSETS per field as term, field, start,
        end); near, the [start, end] body ranges where a proximity rule's items
        met (None without one); snippet, up to SNIPPET_CHARS around the first counted match of the
        weakest group; via_children.
        """
        scan = _Scan(self._matcher, title or "", body or "")
        if not scan.hits and not self._always:
            return []
        names = scan.hits.names
        candidates = {tid for group in names for tid in self._by_group.get(group, ()) if self._needs[tid] <= names}
        candidates.update(self._always)
        verdicts = self._judge(scan, sorted(candidates))
        return [self._hit(verdicts[tid]) for tid in sorted(verdicts) if verdicts[tid].matched]

    def explain(self, title: str | None, body: str) -> list[TopicExplanation]:
        """Every topic, matched or not, with the terms found and the reasons for each miss."""
        scan = _Scan(self._matcher, title or "", body or "")
        verdicts = self._judge(scan, self._order, explain=True)
        return [self._explanation(verdicts[tid]) for tid in self._order]

    def evidence(self, title: str | None, body: str) -> dict[str, dict[str, Any]]:
        """Topic id -> the evidence that would be stored for each matched topic."""
        return {hit.topic_id: hit.evidence for hit in self.match(title, body)}

    def _judge(self, scan: _Scan, tids: Iterable[str], explain: bool = False) -> dict[str, _Verdict]:
        verdicts: dict[str, _Verdict] = {}
        for tid in tids:
            verdicts[tid] = self._verdict(scan, tid, explain)
        children: dict[str, list[str]] = {}
        for tid in sorted(verdicts):
            if verdicts[tid].own_match:
                for ancestor in self._ancestors[tid]:
                    children.setdefault(ancestor, []).append(tid)
        for ancestor, kids in children.items():
            if ancestor not in verdicts:
                verdicts[ancestor] = self._verdict(scan, ancestor, explain)
            best = max(verdicts[k].own_score for k in kids)
            verdicts[ancestor] = replace(verdicts[ancestor], via_children=tuple(kids), child_score=best)
        return verdicts

    def _verdict(self, scan: _Scan, tid: str, explain: bool) -> _Verdict:
        rule = self._rules[tid]
        ctx = _Context(scan, rule.title_weight, rule.lead_weight, rule.body_weight)
        if rule.rule is None:
            outcome = None
        elif not explain:  # match(): the score alone, no reasons
            found = rule.rule.value(ctx, None)
            score = 0.0 if found is None or found is NEUTRAL else found
            outcome = _Outcome(found is not None, score)
        elif explain or rule.min_score <= 0 or any(g in scan.hits for g in rule.groups):
            outcome = rule.rule.evaluate(ctx, None)
        else:
            outcome = NO_MATCH  # without a required group the score is 0, below min_score
        own = outcome is not None and outcome.holds and (outcome.score or 0.0) >= rule.min_score
        return _Verdict(rule, ctx, outcome, own)

    def _hit(self, verdict: _Verdict) -> TopicHit:
        rule = verdict.rule
        scopes = (
            rule.rule.scopes(verdict.context, None) if verdict.own_match and rule.rule is not None else {}
        )
        groups = _group_evidence(verdict, scopes)
        scan = verdict.context.scan
        met = _meetings(rule.rule, verdict.context) if verdict.own_match and rule.rule is not None else []
        spans = sorted({span for unit, where in met for span in scan.unit_spans(unit, where - {TITLE_ONLY})})
        evidence = {
            "rule_version": rule.topic.rule_version,
            "rule": rule.description if verdict.own_match else None,
            "min_score": rule.min_score,
            "groups": groups,
            "near": [list(span) for span in spans] if spans else None,
            "snippet": _snippet_evidence(verdict, groups, scopes),
            "via_children": list(verdict.via_children),
        }
        return TopicHit(rule.topic.id, rule.topic.label, verdict.score, evidence)

    def _explanation(self, verdict: _Verdict) -> TopicExplanation:
        rule = verdict.rule
        outcome = verdict.outcome
        terms = {name: _term_counts(verdict.context.scan.hits.get(name)) for name in rule.all_groups}
        reasons: list[str] = []
        if not verdict.matched:
            if outcome is None:
                reasons.append("no rule of its own and no child topic matched")
            else:
                reasons.extend(outcome.reasons)
                if outcome.holds or 0 < verdict.own_score < rule.min_score:
                    reasons.append(f"score {verdict.own_score:g} below min_score {rule.min_score:g}")
        missing = list(outcome.missing) if outcome is not None and not verdict.matched else []
        excluded = list(outcome.excluded_by) if outcome is not None and not verdict.matched else []
        return TopicExplanation(
            topic_id=rule.topic.id,
            label=rule.topic.label,
            matched=verdict.matched,
            score=verdict.score,
            min_score=rule.min_score,
            terms=terms,
            missing=missing,
            excluded_by=excluded,
            reasons=reasons,
            via_children=list(verdict.via_children),
            rule=rule.description,
        )


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Read, validate and compile a taxonomy file (the packaged one by default)."""
    source = Path(path) if path is not None else DEFAULT_TAXONOMY
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise TaxonomyError(f"{source.name}: cannot read {source}: {exc.strerror}") from None
    version = hashlib.sha256(raw).hexdigest()[:VERSION_CHARS]
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise TaxonomyError(f"{source.name}: not valid YAML: {problem}") from None
    taxonomy = _Builder(source.name).build(data, version)
    taxonomy.content = raw.decode("utf-8", errors="replace")
    LOGGER.info("loaded taxonomy %s version %s with %d topics", source, version, len(taxonomy.topics))
    return taxonomy


# Rules: a tree of all/any/not/near nodes over group names, scored as the YAML header says.

# where a node's matches may come from: None for the whole text, else (unit kind, unit numbers)
Scope = tuple[Any, frozenset[int]] | None


@dataclass(frozen=True)
class _Outcome:
    """A rule node's verdict; score None means the node does not add to the score (a 'not')."""

    holds: bool
    score: float | None
    missing: tuple[str, ...] = ()
    excluded_by: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


class _Node:
    """One node of a topic rule; a scope restricts matches to the title plus some units of the body."""

    def evaluate(self, ctx: _Context, scope: Scope) -> _Outcome:
        raise NotImplementedError

    def holds(self, ctx: _Context, scope: Scope) -> bool:
        """Whether the node holds, without scores or reasons (the fast path of 'near')."""
        raise NotImplementedError

    def value(self, ctx: _Context, scope: Scope) -> Any:
        """evaluate() without reasons, for match(): the score, NEUTRAL (holds, adds nothing) or None."""
        raise NotImplementedError

    def scopes(self, ctx: _Context, scope: Scope) -> dict[str, Scope]:
        """Per required group, where its matches counted (None: the whole text)."""
        raise NotImplementedError

    def truth(self, present: frozenset[str]) -> bool:
        """The rule as plain logic over which groups occur (proximity and scores ignored)."""
        raise NotImplementedError

    def positive_groups(self) -> tuple[str, ...]:
        raise NotImplementedError

    def all_groups(self) -> tuple[str, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class _GroupRef(_Node):
    name: str

    def evaluate(self, ctx: _Context, scope: Scope) -> _Outcome:
        if ctx.present(self.name, scope):
            return _Outcome(True, ctx.score(self.name, scope))
        return _Outcome(False, 0.0, missing=(self.name,), reasons=(f"group {self.name!r} not found",))

    def holds(self, ctx: _Context, scope: Scope) -> bool:
        return ctx.present(self.name, scope)

    def value(self, ctx: _Context, scope: Scope) -> Any:
        return ctx.score(self.name, scope) if ctx.present(self.name, scope) else None

    def scopes(self, ctx: _Context, scope: Scope) -> dict[str, Scope]:
        return {self.name: scope}

    def truth(self, present: frozenset[str]) -> bool:
        return self.name in present

    def positive_groups(self) -> tuple[str, ...]:
        return (self.name,)

    def all_groups(self) -> tuple[str, ...]:
        return (self.name,)

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class _Branch(_Node):
    children: tuple[_Node, ...]
    keyword = ""

    def scopes(self, ctx: _Context, scope: Scope) -> dict[str, Scope]:
        merged: dict[str, Scope] = {}
        for child in self.children:
            for group, where in child.scopes(ctx, scope).items():
                known = merged.get(group, where)
                if known is None or where is None or known[0] != where[0]:
                    merged[group] = None
                else:
                    merged[group] = (known[0], known[1] | where[1])
        return merged

    def positive_groups(self) -> tuple[str, ...]:
        return _unique(g for child in self.children for g in child.positive_groups())

    def all_groups(self) -> tuple[str, ...]:
        return _unique(g for child in self.children for g in child.all_groups())

    def describe(self) -> str:
        return f"{self.keyword}({', '.join(child.describe() for child in self.children)})"


@dataclass(frozen=True)
class _AllOf(_Branch):
    keyword = "all"

    def evaluate(self, ctx: _Context, scope: Scope) -> _Outcome:
        return _all_of([child.evaluate(ctx, scope) for child in self.children])

    def holds(self, ctx: _Context, scope: Scope) -> bool:
        return all(child.holds(ctx, scope) for child in self.children)

    def value(self, ctx: _Context, scope: Scope) -> Any:
        return _all_values(self.children, ctx, scope)

    def truth(self, present: frozenset[str]) -> bool:
        return all(child.truth(present) for child in self.children)


def _all_values(children: Iterable[_Node], ctx: _Context, scope: Scope) -> Any:
    lowest: Any = NEUTRAL
    for child in children:
        found = child.value(ctx, scope)
        if found is None:
            return None
        if found is not NEUTRAL and (lowest is NEUTRAL or found < lowest):
            lowest = found
    return lowest


def _all_of(outcomes: list[_Outcome]) -> _Outcome:
    """Holds when every outcome holds; scores the weakest one."""
    scores = [o.score for o in outcomes if o.score is not None]
    score = min(scores) if scores else None
    failed = [o for o in outcomes if not o.holds]
    if not failed:
        return _Outcome(True, score)
    return _Outcome(
        False,
        score,
        missing=_unique(g for o in failed for g in o.missing),
        excluded_by=_unique(g for o in failed for g in o.excluded_by),
        reasons=_unique(r for o in failed for r in o.reasons),
    )


@dataclass(frozen=True)
class _AnyOf(_Branch):
    keyword = "any"

    def evaluate(self, ctx: _Context, scope: Scope) -> _Outcome:
        outcomes = [child.evaluate(ctx, scope) for child in self.children]
        held = [o for o in outcomes if o.holds]
        if held:
            return _Outcome(True, sum(o.score for o in held if o.score is not None))
        names = ", ".join(child.describe() for child in self.children)
        # alternatives that fail for the same reasons (a paragraph and a sentence rule) report those reasons
        rules = all(isinstance(child, _Branch) for child in self.children) and all(o.reasons for o in outcomes)
        return _Outcome(
            False,
            0.0,
            missing=_unique(g for o in outcomes for g in o.missing),
            excluded_by=_unique(g for o in outcomes for g in o.excluded_by),
            reasons=_unique(r for o in outcomes for r in o.reasons) if rules else (f"none of {names} found",),
        )

    def holds(self, ctx: _Context, scope: Scope) -> bool:
        return any(child.holds(ctx, scope) for child in self.children)

    def value(self, ctx: _Context, scope: Scope) -> Any:
        total, held = 0.0, False
        for child in self.children:
            found = child.value(ctx, scope)
            if found is not None:
                held = True
                if found is not NEUTRAL:
                    total += found
        return total if held else None

    def truth(self, present: frozenset[str]) -> bool:
        return any(child.truth(present) for child in self.children)


@dataclass(frozen=True)
class _NoneOf(_Branch):
    keyword = "not"

    def positive_groups(self) -> tuple[str, ...]:
        return ()

    def scopes(self, ctx: _Context, scope: Scope) -> dict[str, Scope]:
        return {}

    def evaluate(self, ctx: _Context, scope: Scope) -> _Outcome:
        fired = tuple(c.describe() for c in self.children if c.holds(ctx, scope))
        return _Outcome(not fired, None, excluded_by=fired, reasons=tuple(f"excluded by {f}" for f in fired))

    def holds(self, ctx: _Context, scope: Scope) -> bool:
        return not any(child.holds(ctx, scope) for child in self.children)

    def value(self, ctx: _Context, scope: Scope) -> Any:
        return NEUTRAL if self.holds(ctx, scope) else None

    def truth(self, present: frozenset[str]) -> bool:
        return not any(child.truth(present) for child in self.children)


@dataclass(frozen=True)
class _Near(_Branch):
    """Every item holds within one unit: a paragraph, a sentence, or a window of `unit` words."""

    unit: Any = PARAGRAPH
    keyword = "near"
    _groups: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_groups", self.positive_groups())  # looked up once per candidate

    def describe(self) -> str:
        items = ", ".join(child.describe() for child in self.children)
        if self.unit == PARAGRAPH:
            return f"near({items})"
        return f"near[{self.unit if self.unit == SENTENCE else f'{self.unit} words'}]({items})"

    def _what(self) -> str:
        if self.unit == PARAGRAPH:
            return "the same paragraph"
        return "the same sentence" if self.unit == SENTENCE else f"{self.unit} words of each other"

    def evaluate(self, ctx: _Context, scope: Scope) -> _Outcome:
        # a 'not' item only speaks for the unit it is in, so the quick whole-text test leaves it out
        positive = [child for child in self.children if not isinstance(child, _NoneOf)]
        if not all(child.holds(ctx, scope) for child in positive):
            return _all_of([child.evaluate(ctx, scope) for child in positive])
        together = self.together(ctx)
        if not together[1]:
            names = ", ".join(child.describe() for child in self.children)
            return _Outcome(False, 0.0, reasons=(f"{names} never within {self._what()}",))
        # only the matches in the units where everything meets count towards the score
        return _all_of([child.evaluate(ctx, together) for child in self.children])

    def holds(self, ctx: _Context, scope: Scope) -> bool:
        positive = (child for child in self.children if not isinstance(child, _NoneOf))
        return all(child.holds(ctx, scope) for child in positive) and bool(self.together(ctx)[1])

    def value(self, ctx: _Context, scope: Scope) -> Any:
        together = self.together(ctx)
        return _all_values(self.children, ctx, together) if together[1] else None

    def scopes(self, ctx: _Context, scope: Scope) -> dict[str, Scope]:
        return super().scopes(ctx, self.together(ctx))

    def truth(self, present: frozenset[str]) -> bool:
        return all(child.truth(present) for child in self.children)

    def together(self, ctx: _Context) -> tuple[Any, frozenset[int]]:
        """The units (TITLE_ONLY for the title alone) in which every item holds (weights play no part, so
        the answer is kept on the scan for every topic and every later question)."""
        found = ctx.scan.memo.get(id(self))
        if found is None:
            found = ctx.scan.memo[id(self)] = self._together(ctx)
        return found

    def _together(self, ctx: _Context) -> tuple[Any, frozenset[int]]:
        scan = ctx.scan
        starts = {TITLE_ONLY}
        for group in self._groups:
            if group in scan.hits:
                starts.update(scan.units(group, self.unit)[1])
        if isinstance(self.unit, int):  # windows of unit+1 words starting at a match
            met: set[int] = set()
            for start in starts:
                window = frozenset((TITLE_ONLY,)) if start == TITLE_ONLY else frozenset(
                    range(start, start + self.unit + 1))
                if all(child.holds(ctx, (self.unit, window)) for child in self.children):
                    met.update(window)
            return self.unit, frozenset(met)
        return self.unit, frozenset(
            start for start in starts
            if all(child.holds(ctx, (self.unit, frozenset((start,)))) for child in self.children)
        )


NO_MATCH = _Outcome(False, 0.0)
NEUTRAL = object()  # value() of a node that holds without adding to the score (a 'not')
NODE_TYPES: dict[str, type[_Branch]] = {"all": _AllOf, "any": _AnyOf, "not": _NoneOf, "near": _Near}


@dataclass(frozen=True)
class _TopicRule:
    """How one topic is decided: its rule, threshold and field weights."""

    topic: Topic
    rule: _Node | None
    min_score: float
    title_weight: float
    lead_weight: float
    body_weight: float
    groups: tuple[str, ...]  # groups the rule requires, in rule order
    all_groups: tuple[str, ...]  # including those under 'not'
    description: str  # the rule written out, e.g. near(dprk, any(sanctions, sanction_measures))


@dataclass(frozen=True)
class _Verdict:
    """One topic's result on one text, before it is turned into a hit or an explanation."""

    rule: _TopicRule
    context: _Context
    outcome: _Outcome | None
    own_match: bool
    via_children: tuple[str, ...] = ()
    child_score: float = 0.0

    @property
    def matched(self) -> bool:
        return self.own_match or bool(self.via_children)

    @property
    def own_score(self) -> float:
        if self.outcome is None or self.outcome.score is None:
            return 0.0
        return self.outcome.score

    @property
    def score(self) -> float:
        return self.own_score if self.own_match else max(self.own_score, self.child_score)


# Matching: one Aho-Corasick pass over a normalised copy of a text finds the terms of every group.


class _GroupHits:
    """Where one group matched in one text: (start, end, alias) per field, and the units of body hits."""

    __slots__ = ("body", "title", "unit_cache")

    def __init__(self, title: tuple[tuple[int, int, str], ...], body: tuple[tuple[int, int, str], ...]) -> None:
        self.title = title
        self.body = body
        self.unit_cache: dict[Any, tuple[tuple[int, ...], frozenset[int]]] = {}


class _Hits:
    """Group name -> _GroupHits, made when first asked for: most groups found are never looked at."""

    __slots__ = ("body", "made", "names", "title")

    def __init__(self, title: dict[str, list[tuple[int, int, str]]], body: dict[str, list[tuple[int, int, str]]]):
        self.title = title
        self.body = body
        self.names = title.keys() | body.keys()
        self.made: dict[str, _GroupHits] = {}

    def get(self, group: str, default: None = None) -> _GroupHits | None:
        made = self.made.get(group)
        if made is None:
            if group not in self.names:
                return default
            made = self.made[group] = _GroupHits(tuple(self.title.get(group, ())), tuple(self.body.get(group, ())))
        return made

    def __getitem__(self, group: str) -> _GroupHits:
        made = self.get(group)
        if made is None:
            raise KeyError(group)
        return made

    def __contains__(self, group: object) -> bool:
        return group in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class _Scan:
    """Every group's matches in one title and body, found once and shared by all topics."""

    __slots__ = ("body", "bounds", "hits", "memo", "title")

    def __init__(self, matcher: _Matcher, title: str, body: str) -> None:
        self.title = title[:MAX_SCAN_CHARS]
        self.body = body[:MAX_SCAN_CHARS]
        in_title = matcher.find(self.title)
        in_body = matcher.find(self.body)
        self.bounds: dict[str, tuple[list[int], list[int]]] = {}
        self.memo: dict[int, tuple[Any, frozenset[int]]] = {}  # proximity node -> where its items met
        self.hits = _Hits(in_title, in_body)

    def _bounds(self, unit: Any) -> tuple[list[int], list[int]]:
        """(starts, ends) of the separators between paragraphs or sentences, or of the words."""
        kind = "words" if isinstance(unit, int) else unit
        found = self.bounds.get(kind)
        if found is None:
            pattern = {PARAGRAPH: LINE_BREAK, SENTENCE: SENTENCE_BREAK, "words": WORD_CHARS}[kind]
            spans = [m.span() for m in pattern.finditer(self.body)]
            if kind == SENTENCE:  # an initial or a title before the full stop does not end a sentence
                body = self.body
                spans = [(s, e) for s, e in spans
                         if body[s] == "\n" or not NOT_A_SENTENCE_END.search(body, max(0, s - 4), s)]
            found = self.bounds[kind] = ([s for s, _ in spans], [e for _, e in spans])
        return found

    def unit_of(self, unit: Any, offset: int) -> int:
        starts, ends = self._bounds(unit)
        if isinstance(unit, int):
            return bisect_right(starts, offset) - 1  # the word the match starts in
        return bisect_right(ends, offset)  # separators before the match

    def units(self, group: str, unit: Any) -> tuple[tuple[int, ...], frozenset[int]]:
        """Per body hit of a group, the unit it lies in; and the set of those units."""
        hits = self.hits[group]
        found = hits.unit_cache.get(unit)
        if found is None:
            where = tuple(self.unit_of(unit, start) for start, _, _ in hits.body)
            found = hits.unit_cache[unit] = (where, frozenset(where))
        return found

    def unit_spans(self, unit: Any, numbers: Iterable[int]) -> list[tuple[int, int]]:
        """[start, end) of body units; consecutive words of a window make one span."""
        starts, ends = self._bounds(unit)
        if isinstance(unit, int):
            spans: list[tuple[int, int]] = []
            for number in sorted(n for n in numbers if 0 <= n < len(starts)):
                if spans and number > 0 and spans[-1][1] == ends[number - 1]:
                    spans[-1] = (spans[-1][0], ends[number])
                else:
                    spans.append((starts[number], ends[number]))
            return spans
        spans = []
        for n in numbers:
            start = ends[n - 1] if n > 0 else 0
            end = starts[n] if n < len(starts) else len(self.body)
            if unit == SENTENCE and n < len(starts):  # keep the full stop, drop the space after it
                end = len(self.body[:ends[n]].rstrip())
            spans.append((start, end))
        return spans


class _Context:
    """A scan seen through one topic's field weights."""

    __slots__ = ("body_weight", "lead_weight", "scan", "title_weight")

    def __init__(self, scan: _Scan, title_weight: float, lead_weight: float, body_weight: float) -> None:
        self.scan = scan
        self.title_weight = title_weight
        self.lead_weight = lead_weight
        self.body_weight = body_weight

    def present(self, group: str, scope: Scope) -> bool:
        hits = self.scan.hits.get(group)
        if hits is None:
            return False
        if scope is None or (hits.title and _title_in(scope)):
            return True
        return not scope[1].isdisjoint(self.scan.units(group, scope[0])[1])

    def score(self, group: str, scope: Scope = None) -> float:
        hits = self.scan.hits.get(group)
        if hits is None:
            return 0.0
        total = len(hits.title) * self.title_weight if scope is None or _title_in(scope) else 0.0
        if not hits.body:
            return total
        if scope is None:
            counted = [True] * len(hits.body)
        else:
            counted = [u in scope[1] for u in self.scan.units(group, scope[0])[0]]
        if self.lead_weight == self.body_weight:
            return total + sum(counted) * self.body_weight
        paragraphs = self.scan.units(group, PARAGRAPH)[0]
        return total + sum(
            (self.lead_weight if p == 0 else self.body_weight) for p, c in zip(paragraphs, counted, strict=True) if c
        )


def _title_in(scope: tuple[Any, frozenset[int]]) -> bool:
    """The title is part of every paragraph, but a sentence (or a word window) of its own."""
    return scope[0] == PARAGRAPH or TITLE_ONLY in scope[1]


class _Matcher:
    """Finds the terms of every group in one Aho-Corasick pass over a text.

    Texts and terms are normalised alike, keeping offsets: white space, hyphens and line breaks become
    one space (runs of spaces are squeezed, with an offset map), curly apostrophes straight ones, and
    letters lower case; case-sensitive terms are then checked against the spelling in the text. A match
    counts when it starts and ends at word boundaries; a wildcard runs on to the end of its word. A term
    listed in several groups credits all of them; within one group overlapping matches count once, the
    longer winning, so "Korea" inside "North Korea" counts for another group but not for its own.
    """

    def __init__(self, groups: dict[str, list[tuple[str, bool]]]) -> None:
        owners: dict[tuple[str, str | None, bool], list[tuple[str, str]]] = {}
        for group, terms in groups.items():
            for alias, case_sensitive in terms:
                key, exact, wildcard = _term_key(alias)
                owners.setdefault((key, exact if case_sensitive else None, wildcard), []).append((group, alias))
        by_key: dict[str, list[tuple[str | None, bool, tuple[tuple[str, str], ...]]]] = {}
        for (key, exact, wildcard), names in owners.items():  # (exact spelling, wildcard, owners) per term
            by_key.setdefault(key, []).append((exact, wildcard, tuple(names)))
        self._automaton = ahocorasick.Automaton()
        for key, terms in by_key.items():
            self._automaton.add_word(key, (len(key), tuple(terms)))
        self.size = len(by_key)
        if by_key:
            self._automaton.make_automaton()

    def find(self, text: str) -> dict[str, list[tuple[int, int, str]]]:
        """Matches per group as (start, end, alias), in text order, offsets into `text`."""
        if not text or not self.size:
            return {}
        norm = _Normalised(text)
        key = norm.key
        size = len(key)
        found: dict[str, list[tuple[int, int, str]]] = {}
        squeezed = bool(norm.starts)
        tail = WORD_TAIL.match
        for last, (length, terms) in self._automaton.iter(key):
            start = last - length + 1
            if start > 0 and (key[start - 1].isalnum() or key[start - 1] == "_"):
                continue
            after = last + 1
            for exact, wildcard, owners in terms:
                stop = after
                if wildcard:
                    stop = tail(key, after).end()  # type: ignore[union-attr]
                elif stop < size and (key[stop].isalnum() or key[stop] == "_"):
                    continue
                if exact is not None and norm.exact[start:after] != exact:
                    continue
                begin, end = norm.original(start, stop) if squeezed else (start, stop)
                for group, alias in owners:
                    found.setdefault(group, []).append((begin, end, alias))
        return {group: _longest_first(hits) if len(hits) > 1 else hits for group, hits in found.items()}


class _Normalised:
    """A text prepared for matching: `key` (folded) and `exact` (case kept), with a map back to offsets."""

    __slots__ = ("exact", "key", "shifts", "starts")

    def __init__(self, text: str) -> None:
        spaced = text
        for old, new in COMMON_REPLACEMENTS:
            spaced = spaced.replace(old, new)
        if not spaced.isascii() and RARE_SPACES.search(spaced):
            spaced = RARE_SPACES.sub(" ", spaced)
        self.starts: list[int] = []
        self.shifts: list[int] = []
        if "  " in spaced:
            removed = 0
            for run in SPACE_RUN.finditer(spaced):
                start, end = run.span()
                self.starts.append(start - removed + 1)  # where the text goes on, in the squeezed copy
                removed += end - start - 1
                self.shifts.append(removed)
            spaced = SPACE_RUN.sub(" ", spaced)
        self.exact = spaced
        self.key = _fold(spaced)

    def original(self, start: int, stop: int) -> tuple[int, int]:
        """Offsets in the original text of key[start:stop]."""
        if not self.starts:
            return start, stop
        return self._at(start), self._at(stop - 1) + 1

    def _at(self, position: int) -> int:
        index = bisect_right(self.starts, position) - 1
        return position + (self.shifts[index] if index >= 0 else 0)


def _fold(text: str) -> str:
    """Lower case with the same length: a character whose lower case is longer ('İ') is kept as it is."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(char if len(low := char.lower()) != 1 else low for char in text)


def _term_key(term: str) -> tuple[str, str, bool]:
    """(folded key, exact spelling, wildcard) of an alias; its words are joined by one space."""
    words = [w for w in TERM_WORD_BREAK.split(term.strip()) if w]
    wildcard = words[-1].endswith("*")
    if wildcard:
        words[-1] = words[-1][:-1]
    exact = " ".join(words).replace("\u2018", "'").replace("\u2019", "'")
    return _fold(exact), exact, wildcard


def _longest_first(hits: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Hits in text order with overlaps removed, the longer of two overlapping hits kept."""
    kept: list[tuple[int, int, str]] = []
    for hit in sorted(hits, key=lambda h: (h[0], h[0] - h[1])):
        if not kept or hit[0] >= kept[-1][1]:
            kept.append(hit)
    return kept


# Loading: validation with errors that name the topic or group and the field.


class _Builder:
    """Validates the parsed YAML and compiles it; every error names the topic or group and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        raise TaxonomyError(f"{self.source}: {where}: {problem}")

    def build(self, data: Any, version: str) -> Taxonomy:
        if not isinstance(data, dict):
            self.fail("file", "expected a mapping with 'groups' and 'topics'")
        self.check_keys("file", data, FILE_KEYS)
        min_score, weights = self.defaults(data.get("defaults"))
        terms = self.group_terms(data.get("groups"))
        entries = data.get("topics")
        if not isinstance(entries, list) or not entries:
            self.fail("topics", "expected a non-empty list of topics")
        rules: dict[str, _TopicRule] = {}
        labels: dict[str, str] = {}
        for index, entry in enumerate(entries):
            rule = self.topic(index, entry, terms, min_score, weights)
            tid = rule.topic.id
            if tid in rules:
                self.fail(f"topic {tid!r}", "id: used by more than one topic")
            if rule.topic.label in labels:
                other = labels[rule.topic.label]
                self.fail(f"topic {tid!r}", f"label: {rule.topic.label!r} is also used by topic {other!r}")
            rules[tid] = rule
            labels[rule.topic.label] = tid
        self.check_hierarchy(rules)
        self.check_groups(terms, rules)
        rules = _with_rule_versions(rules, terms)
        return Taxonomy(version, [rule.topic for rule in rules.values()], rules, terms)

    def check_keys(self, where: str, data: dict[Any, Any], allowed: tuple[str, ...]) -> None:
        for key in data:
            if key not in allowed:
                self.fail(where, f"unknown field {key!r} (expected one of {', '.join(allowed)})")

    def defaults(self, data: Any) -> tuple[float, dict[str, float]]:
        if data is None:
            return DEFAULT_MIN_SCORE, dict(DEFAULT_WEIGHTS)
        if not isinstance(data, dict):
            self.fail("defaults", "expected a mapping")
        self.check_keys("defaults", data, DEFAULTS_KEYS)
        min_score = self.number("defaults", "min_score", data.get("min_score", DEFAULT_MIN_SCORE))
        weights = self.weights("defaults", data.get("weights"), DEFAULT_WEIGHTS)
        return min_score, weights

    def number(self, where: str, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            self.fail(where, f"{name}: expected a number >= 0, got {value!r}")
        return float(value)

    def weights(self, where: str, data: Any, base: dict[str, float]) -> dict[str, float]:
        if data is None:
            return dict(base)
        if not isinstance(data, dict):
            self.fail(where, "weights: expected a mapping of title/lead/body to numbers")
        self.check_keys(f"{where}: weights", data, FIELDS)
        merged = dict(base)
        for name, value in data.items():
            merged[name] = self.number(where, f"weights.{name}", value)
        return merged

    def group_terms(self, data: Any) -> dict[str, list[tuple[str, bool]]]:
        if not isinstance(data, dict) or not data:
            self.fail("groups", "expected a non-empty mapping of group name to terms")
        groups: dict[str, list[tuple[str, bool]]] = {}
        for name, spec in data.items():
            where = f"group {name!r}"
            if not isinstance(name, str) or not GROUP_NAME.fullmatch(name):
                self.fail(where, "name: use lower-case letters, digits and underscores")
            if spec is None or isinstance(spec, list):
                spec = {"terms": spec}
            if not isinstance(spec, dict):
                self.fail(where, "expected a list of terms or a mapping with terms/case_sensitive")
            self.check_keys(where, spec, GROUP_KEYS)
            terms: list[tuple[str, bool]] = []
            for key in GROUP_KEYS:
                items = spec.get(key) or []
                if not isinstance(items, list):
                    self.fail(where, f"{key}: expected a list")
                for item in items:
                    terms.append((self.term(where, key, item), key == "case_sensitive"))
            groups[name] = terms
        return groups

    def term(self, where: str, key: str, item: Any) -> str:
        if not isinstance(item, str) or not item.strip():
            self.fail(where, f"{key}: term {item!r} must be a non-empty string (quote numbers)")
        words = [w for w in TERM_WORD_BREAK.split(item.strip()) if w]
        if not words:
            self.fail(where, f"{key}: term {item!r} has no words")
        for number, word in enumerate(words):
            stem = word.removesuffix("*")
            if "*" in stem:
                self.fail(where, f"{key}: term {item!r}: '*' may only end a word")
            if stem != word and number < len(words) - 1:
                self.fail(where, f"{key}: term {item!r}: '*' may only end the last word")
            if stem != word and len(stem) < MIN_WILDCARD_STEM:
                need = f"a wildcard needs {MIN_WILDCARD_STEM}+ characters before it"
                self.fail(where, f"{key}: term {item!r}: {need}")
        if not any(WORD_CHARS.search(word) for word in words):
            self.fail(where, f"{key}: term {item!r} has no letters or digits")
        return item.strip()

    def topic(
        self,
        index: int,
        entry: Any,
        terms: dict[str, list[tuple[str, bool]]],
        min_score: float,
        weights: dict[str, float],
    ) -> _TopicRule:
        where = f"topics[{index}]"
        if not isinstance(entry, dict):
            self.fail(where, "expected a mapping")
        tid = entry.get("id")
        if not isinstance(tid, str) or not TOPIC_ID.fullmatch(tid):
            self.fail(where, f"id: expected a slug such as 'dprk-sanctions', got {tid!r}")
        where = f"topic {tid!r}"
        self.check_keys(where, entry, TOPIC_KEYS)
        label = entry.get("label")
        if not isinstance(label, str) or not label.strip():
            self.fail(where, "label: expected a non-empty string")
        description = entry.get("description", "")
        if not isinstance(description, str):
            self.fail(where, "description: expected a string")
        parent = entry.get("parent")
        if parent is not None and not isinstance(parent, str):
            self.fail(where, "parent: expected a topic id")
        rule: _Node | None = None
        if entry.get("rule") is not None:
            rule = self.rule(where, entry["rule"], terms, "rule", inside_near=False)
            if not rule.positive_groups():
                self.fail(where, "rule: needs at least one group outside 'not'")
        topic_weights = self.weights(where, entry.get("weights"), weights)
        body_weight = topic_weights["body"]
        return _TopicRule(
            topic=Topic(tid, label.strip(), " ".join(description.split()), parent,
                        rule.describe() if rule is not None else ""),
            rule=rule,
            min_score=self.number(where, "min_score", entry.get("min_score", min_score)),
            title_weight=topic_weights["title"],
            lead_weight=topic_weights.get("lead", body_weight),
            body_weight=body_weight,
            groups=rule.positive_groups() if rule is not None else (),
            all_groups=rule.all_groups() if rule is not None else (),
            description=rule.describe() if rule is not None else "",
        )

    def rule(self, where: str, node: Any, terms: dict[str, Any], path: str, inside_near: bool) -> _Node:
        if isinstance(node, str):
            if node not in terms:
                self.fail(where, f"{path}: unknown group {node!r}")
            return _GroupRef(node)
        if not isinstance(node, dict) or not node:
            self.fail(where, f"{path}: expected a group name or a mapping with {', '.join(RULE_KEYS)}")
        unit: Any = PARAGRAPH
        if "within" in node:
            unit = self.within(where, path, node)
        parts: list[_Node] = []
        for key, items in node.items():
            if key not in RULE_KEYS:
                self.fail(where, f"{path}: unknown rule key {key!r} (expected {', '.join(RULE_KEYS)})")
            if key == "within":
                continue
            if not isinstance(items, list) or not items:
                self.fail(where, f"{path}.{key}: expected a non-empty list")
            if key == "near" and inside_near:
                self.fail(where, f"{path}.near: a 'near' cannot sit inside another 'near'")
            children = tuple(
                self.rule(where, item, terms, f"{path}.{key}[{i}]", inside_near or key == "near")
                for i, item in enumerate(items)
            )
            parts.append(_Near(children, unit) if key == "near" else NODE_TYPES[key](children))
        return parts[0] if len(parts) == 1 else _AllOf(tuple(parts))

    def within(self, where: str, path: str, node: dict[str, Any]) -> Any:
        value = node["within"]
        if "near" not in node:
            self.fail(where, f"{path}.within: only applies to a 'near' in the same mapping")
        if value in (PARAGRAPH, SENTENCE):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WITHIN_WORDS:
            self.fail(where, f"{path}.within: expected 'paragraph', 'sentence' or a number of words "
                             f"from 1 to {MAX_WITHIN_WORDS}, got {value!r}")
        return value

    def check_hierarchy(self, rules: dict[str, _TopicRule]) -> None:
        has_children = {r.topic.parent for r in rules.values()}
        for tid, rule in rules.items():
            where = f"topic {tid!r}"
            parent = rule.topic.parent
            if parent is not None and parent not in rules:
                self.fail(where, f"parent: unknown topic {parent!r}")
            if rule.rule is None and tid not in has_children:
                self.fail(where, "rule: missing (only a parent topic may go without a rule)")
            seen = {tid}
            while parent is not None:
                if parent in seen:
                    self.fail(where, "parent: topics form a cycle")
                seen.add(parent)
                parent = rules[parent].topic.parent

    def check_groups(self, terms: dict[str, list[tuple[str, bool]]], rules: dict[str, _TopicRule]) -> None:
        users: dict[str, list[str]] = {}
        for tid, rule in rules.items():
            for name in rule.all_groups:
                users.setdefault(name, []).append(tid)
        for name, items in terms.items():
            used_by = users.get(name, [])
            where = f"group {name!r}"
            if used_by:
                where += f" (used by topic {', '.join(map(repr, used_by))})"
            if not items:
                self.fail(where, "empty alias list: give at least one term")
            seen: set[tuple[str, bool]] = set()
            for term, case_sensitive in items:
                spelling = " ".join(w for w in TERM_WORD_BREAK.split(term) if w)
                key = (spelling if case_sensitive else spelling.casefold(), case_sensitive)
                if key in seen:
                    self.fail(where, f"duplicate term {term!r}")
                seen.add(key)
            if not used_by:
                LOGGER.warning("taxonomy %s: group %r is not used by any topic", self.source, name)


def _with_rule_versions(
    rules: dict[str, _TopicRule], terms: dict[str, list[tuple[str, bool]]]
) -> dict[str, _TopicRule]:
    """Give every topic the hash of what decides it: its rule, the terms of its groups, threshold, weights,
    and the rule versions of its children (a parent is assigned through them)."""
    children: dict[str, list[str]] = {}
    for tid, rule in rules.items():
        if rule.topic.parent is not None:
            children.setdefault(rule.topic.parent, []).append(tid)
    versions: dict[str, str] = {}

    def version(tid: str) -> str:
        if tid not in versions:
            rule = rules[tid]
            definition = {
                "rule": rule.description,
                "groups": {g: sorted([t, cs] for t, cs in terms[g]) for g in rule.all_groups},
                "min_score": rule.min_score,
                "weights": [rule.title_weight, rule.lead_weight, rule.body_weight],
                "children": sorted(version(child) for child in children.get(tid, [])),
            }
            raw = json.dumps(definition, sort_keys=True, ensure_ascii=False).encode()
            versions[tid] = hashlib.sha256(raw).hexdigest()[:VERSION_CHARS]
        return versions[tid]

    return {
        tid: replace(rule, topic=replace(rule.topic, rule_version=version(tid))) for tid, rule in rules.items()
    }


# `topics check`: what validation cannot refuse but a reviewer should see.


@dataclass(frozen=True)
class Finding:
    """One remark of `topics check`: level 'error' (a rule that can never match) or 'warning'."""

    level: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


MAX_CHECK_GROUPS = 14  # rules over more groups than this are not enumerated


def check_taxonomy(taxonomy: Taxonomy) -> list[Finding]:
    """Rules that can never match, rules that always overlap another topic, and terms that never count.

    The analysis treats each rule as plain logic over which groups occur in a text (proximity and scores
    aside), and knows that a group whose every term is also a term of another group implies it.
    """
    rules = taxonomy._rules
    findings: list[Finding] = []
    keys = {name: {(*_term_key(t)[0:2], cs) for t, cs in items} for name, items in taxonomy.groups.items()}
    implies = {
        (a, b) for a in keys for b in keys if a != b and all(_term_covered(k, keys[b]) for k in keys[a])
    }
    for tid in taxonomy._order:
        rule = rules[tid]
        where = f"topic {tid!r}"
        if rule.rule is None:
            continue
        if rule.min_score > 0 and max(rule.title_weight, rule.lead_weight, rule.body_weight) == 0:
            findings.append(Finding("error", where, "every field weight is 0, so min_score can never be reached"))
            continue
        names = rule.all_groups
        if len(names) <= MAX_CHECK_GROUPS and not any(rule.rule.truth(p) for p in _worlds(names, implies)):
            findings.append(Finding("error", where, f"{rule.description} can never hold (a group it requires "
                                                    "always brings one it excludes)"))
    broken = {finding.where for finding in findings}
    for first, second in itertools.combinations(taxonomy._order, 2):
        a, b = rules[first], rules[second]
        if f"topic {first!r}" in broken or f"topic {second!r}" in broken:
            continue
        if a.rule is None or b.rule is None or not set(a.groups) & set(b.groups):
            continue
        if first in taxonomy._ancestors[second] or second in taxonomy._ancestors[first]:
            continue
        names = _unique((*a.all_groups, *b.all_groups))
        if len(names) > MAX_CHECK_GROUPS:
            continue
        worlds = [w for w in _worlds(names, implies)]
        a_then_b = all(b.rule.truth(w) for w in worlds if a.rule.truth(w))
        b_then_a = all(a.rule.truth(w) for w in worlds if b.rule.truth(w))
        if a_then_b and b_then_a:
            findings.append(Finding("warning", f"topic {first!r}", f"same groups and logic as topic {second!r}: "
                                                                   "they will almost always be assigned together"))
        elif a_then_b or b_then_a:
            narrow, wide = (first, second) if a_then_b else (second, first)
            findings.append(Finding("warning", f"topic {narrow!r}", f"every text that satisfies its groups also "
                                                                    f"satisfies topic {wide!r}: make it a child "
                                                                    f"of {wide!r} or add a 'not'"))
    for name, items in taxonomy.groups.items():
        for term, case_sensitive in items:
            key, exact, wildcard = _term_key(term)
            for other, other_cs in items:
                other_key, other_exact, other_wildcard = _term_key(other)
                if other == term or not other_wildcard or (wildcard and len(other_key) > len(key)):
                    continue
                same = (exact.startswith(other_exact) if other_cs else key.startswith(other_key))
                if same and (other_cs == case_sensitive or not other_cs) and " " not in key[len(other_key):]:
                    findings.append(Finding("warning", f"group {name!r}",
                                            f"term {term!r} is already covered by {other!r}"))
                    break
    return findings


def _term_covered(term: tuple[str, str, bool], others: set[tuple[str, str, bool]]) -> bool:
    key, exact, case_sensitive = term
    return any(k == key and (not cs or (case_sensitive and e == exact)) for k, e, cs in others)


def _worlds(names: tuple[str, ...], implies: set[tuple[str, str]]) -> Iterable[frozenset[str]]:
    """Every set of present groups that the term overlaps between groups allow."""
    for bits in itertools.product((False, True), repeat=len(names)):
        present = frozenset(n for n, on in zip(names, bits, strict=True) if on)
        if all(b in present for a, b in implies if a in present and b in names):
            yield present


# Evidence and small helpers.


def _term_counts(hits: _GroupHits | None) -> dict[str, int]:
    if hits is None:
        return {}
    return dict(Counter(alias for _, _, alias in (*hits.title, *hits.body)))


def _group_evidence(verdict: _Verdict, scopes: dict[str, Scope]) -> dict[str, Any]:
    """Per required group: the points that counted, every matched term with its count, the first matches."""
    evidence: dict[str, Any] = {}
    for name in verdict.rule.groups:
        hits = verdict.context.scan.hits.get(name)
        if hits is None:
            continue
        matches = [
            {"term": alias, "field": field_name, "start": start, "end": end}
            for field_name, found in (("title", hits.title), ("body", hits.body))
            for start, end, alias in found[:MAX_OFFSETS]
        ]
        evidence[name] = {
            "score": verdict.context.score(name, scopes.get(name)),
            "terms": _term_counts(hits),
            "matches": matches,
        }
    return evidence


def _snippet_evidence(verdict: _Verdict, groups: dict[str, Any], scopes: dict[str, Scope]) -> dict[str, Any] | None:
    """Context around the first counted match of the weakest group: what a reviewer should check first."""
    if not groups:
        return None
    name = min(groups, key=lambda g: groups[g]["score"])  # ties keep rule order
    scan = verdict.context.scan
    hits = scan.hits[name]
    scope = scopes.get(name)
    if scope is None:
        in_scope = list(hits.body)
    else:
        units = scan.units(name, scope[0])[0]
        in_scope = [hit for hit, unit in zip(hits.body, units, strict=True) if unit in scope[1]]
    field_name, text, found = ("body", scan.body, in_scope)
    if not found:
        field_name, text, found = ("title", scan.title, list(hits.title))
    start, end, _ = found[0]
    snippet = _snippet(text, start, end)
    return {"group": name, "field": field_name, "start": start, "end": end, "text": snippet}


def _snippet(text: str, start: int, end: int) -> str:
    """At most SNIPPET_CHARS of the paragraph around text[start:end], whitespace collapsed."""
    para_start = text.rfind("\n", 0, start) + 1
    para_end = text.find("\n", end)
    if para_end == -1:
        para_end = len(text)
    budget = SNIPPET_CHARS - 2  # leave room for an ellipsis at each end
    spare = max(budget - (end - start), 0)
    low = max(para_start, start - spare // 2)
    high = min(para_end, low + budget)
    low = max(para_start, high - budget)
    if low > para_start:
        cut = text.find(" ", low, start)
        low = cut + 1 if cut != -1 else low
    if high < para_end:
        cut = text.rfind(" ", end, high)
        high = cut if cut != -1 else high
    piece = " ".join(text[low:high].replace("\x00", "").split())[:budget]  # jsonb refuses NUL
    return ("…" if low > para_start else "") + piece + ("…" if high < para_end else "")


def _meetings(node: _Node, ctx: _Context) -> list[tuple[Any, frozenset[int]]]:
    """The units where each proximity rule that holds found its items together."""
    if isinstance(node, _Near):
        together = node.together(ctx)
        return [together] if together[1] else []
    if isinstance(node, _Branch) and not isinstance(node, _NoneOf):
        return [met for child in node.children for met in _meetings(child, ctx)]
    return []


def _required(node: _Node) -> frozenset[str]:
    """Groups that must occur somewhere in a text for the rule to hold."""
    if isinstance(node, _GroupRef):
        return frozenset((node.name,))
    if isinstance(node, _NoneOf):
        return frozenset()
    parts = [_required(child) for child in node.children]  # type: ignore[attr-defined]
    if isinstance(node, _AnyOf):
        return frozenset.intersection(*parts)
    return frozenset().union(*parts)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _ancestors(tid: str, rules: dict[str, _TopicRule]) -> tuple[str, ...]:
    found = []
    parent = rules[tid].topic.parent
    while parent is not None:
        found.append(parent)
        parent = rules[parent].topic.parent
    return tuple(found)

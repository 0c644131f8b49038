"""Topic tagging: explainable keyword rules read from a reviewed taxonomy file."""

from __future__ import annotations

import hashlib
import logging
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from pipeline.models import TopicHit

LOGGER = logging.getLogger(__name__)

DEFAULT_TAXONOMY = Path(__file__).with_name("taxonomy.yaml")
VERSION_CHARS = 16
FIELDS = ("title", "body")
DEFAULT_WEIGHTS = {"title": 2.0, "body": 1.0}
DEFAULT_MIN_SCORE = 1.0
MAX_OFFSETS = 5
SNIPPET_CHARS = 200
MIN_WILDCARD_STEM = 3
TITLE_ONLY = -1  # paragraph index that no body hit has, so only title hits count

FILE_KEYS = ("groups", "topics", "defaults")
DEFAULTS_KEYS = ("min_score", "weights")
GROUP_KEYS = ("terms", "case_sensitive")
TOPIC_KEYS = ("id", "label", "description", "parent", "rule", "min_score", "weights")
RULE_KEYS = ("all", "any", "not", "near")

TOPIC_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
GROUP_NAME = re.compile(r"[a-z][a-z0-9_]*")
TERM_WORD_BREAK = re.compile(r"[\s\-\u2010\u2011]+")
TEXT_WORD_BREAK = r"[\s\-\u2010\u2011]+"
APOSTROPHE_CHARS = "'\u2018\u2019"
APOSTROPHES = f"[{APOSTROPHE_CHARS}]"
WORD_CHARS = re.compile(r"\w+")
LINE_BREAK = re.compile(r"\n")


class TaxonomyError(ValueError):
    """A taxonomy file that cannot be used; the message names the topic or group and the field."""


@dataclass(frozen=True)
class Topic:
    """One topic as readers see it."""

    id: str
    label: str
    description: str
    parent: str | None


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
        self.topics = topics
        self._rules = rules
        used = {g for rule in rules.values() for g in rule.all_groups}
        self._matcher = _Matcher({name: terms for name, terms in groups.items() if name in used})
        self._ancestors = {topic.id: _ancestors(topic.id, rules) for topic in topics}
        self._order = sorted(rules)

    def match(self, title: str | None, body: str) -> list[TopicHit]:
        """Topics whose rule holds with score >= min_score, and their parents, sorted by topic id.

        The score is explained in the header of taxonomy.yaml. Evidence (JSON-ready) holds:
        taxonomy_version; rule, the rule that held (None for a parent earned through its children);
        groups, per required group that matched: score (the points that counted), terms (alias ->
        count, whole text) and offsets (first [start, end] per field); near, the [start, end] body
        ranges of the paragraphs where a 'near' rule's items met (None without 'near'); snippet, up
        to SNIPPET_CHARS around the first counted match of the weakest group; via_children.
        """
        verdicts = self._judge(title, body)
        return [self._hit(verdicts[tid]) for tid in self._order if verdicts[tid].matched]

    def explain(self, title: str | None, body: str) -> list[TopicExplanation]:
        """Every topic, matched or not, with the terms found and the reasons for each miss."""
        verdicts = self._judge(title, body, explain=True)
        return [self._explanation(verdicts[tid]) for tid in self._order]

    def _judge(self, title: str | None, body: str, explain: bool = False) -> dict[str, _Verdict]:
        scan = _Scan(self._matcher, title or "", body or "")
        verdicts: dict[str, _Verdict] = {}
        for tid, rule in self._rules.items():
            ctx = _Context(scan, rule.title_weight, rule.body_weight)
            if rule.rule is None:
                outcome = None
            elif explain or rule.min_score <= 0 or any(g in scan.hits for g in rule.groups):
                outcome = rule.rule.evaluate(ctx, None)
            else:
                outcome = NO_MATCH  # without a required group the score is 0, below min_score
            own = outcome is not None and outcome.holds and (outcome.score or 0.0) >= rule.min_score
            verdicts[tid] = _Verdict(rule, ctx, outcome, own)
        children: dict[str, list[str]] = {}
        for tid in self._order:
            if verdicts[tid].own_match:
                for ancestor in self._ancestors[tid]:
                    children.setdefault(ancestor, []).append(tid)
        for ancestor, kids in children.items():
            best = max(verdicts[k].own_score for k in kids)
            verdicts[ancestor] = replace(verdicts[ancestor], via_children=tuple(kids), child_score=best)
        return verdicts

    def _hit(self, verdict: _Verdict) -> TopicHit:
        rule = verdict.rule
        scopes = (
            rule.rule.scopes(verdict.context, None) if verdict.own_match and rule.rule is not None else {}
        )
        groups = _group_evidence(verdict, scopes)
        near = sorted({p for where in scopes.values() if where is not None for p in where} - {TITLE_ONLY})
        evidence = {
            "taxonomy_version": self.version,
            "rule": rule.description if verdict.own_match else None,
            "groups": groups,
            "near": [list(verdict.context.scan.paragraph_span(p)) for p in near] if near else None,
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
        )


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Read, validate and compile a taxonomy file (the packaged one by default)."""
    source = Path(path) if path is not None else DEFAULT_TAXONOMY
    raw = source.read_bytes()
    version = hashlib.sha256(raw).hexdigest()[:VERSION_CHARS]
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{source.name}: not valid YAML: {exc}") from exc
    taxonomy = _Builder(source.name).build(data, version)
    LOGGER.info("loaded taxonomy %s version %s with %d topics", source, version, len(taxonomy.topics))
    return taxonomy


# Rules: a tree of all/any/not/near nodes over group names, scored as the YAML header says.


@dataclass(frozen=True)
class _Outcome:
    """A rule node's verdict; score None means the node does not add to the score (a 'not')."""

    holds: bool
    score: float | None
    missing: tuple[str, ...] = ()
    excluded_by: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


class _Node:
    """One node of a topic rule; a `scope` restricts matches to the title plus those paragraphs."""

    def evaluate(self, ctx: _Context, scope: frozenset[int] | None) -> _Outcome:
        raise NotImplementedError

    def holds(self, ctx: _Context, scope: frozenset[int] | None) -> bool:
        """Whether the node holds, without scores or reasons (the fast path of 'near')."""
        raise NotImplementedError

    def scopes(self, ctx: _Context, scope: frozenset[int] | None) -> dict[str, frozenset[int] | None]:
        """Per required group, the paragraphs whose matches counted (None: the whole text)."""
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

    def evaluate(self, ctx: _Context, scope: frozenset[int] | None) -> _Outcome:
        if ctx.present(self.name, scope):
            return _Outcome(True, ctx.score(self.name, scope))
        return _Outcome(False, 0.0, missing=(self.name,), reasons=(f"group {self.name!r} not found",))

    def holds(self, ctx: _Context, scope: frozenset[int] | None) -> bool:
        return ctx.present(self.name, scope)

    def scopes(self, ctx: _Context, scope: frozenset[int] | None) -> dict[str, frozenset[int] | None]:
        return {self.name: scope}

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

    def scopes(self, ctx: _Context, scope: frozenset[int] | None) -> dict[str, frozenset[int] | None]:
        merged: dict[str, frozenset[int] | None] = {}
        for child in self.children:
            for group, where in child.scopes(ctx, scope).items():
                known = merged.get(group, where)
                merged[group] = None if known is None or where is None else known | where
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

    def evaluate(self, ctx: _Context, scope: frozenset[int] | None) -> _Outcome:
        return _all_of([child.evaluate(ctx, scope) for child in self.children])

    def holds(self, ctx: _Context, scope: frozenset[int] | None) -> bool:
        return all(child.holds(ctx, scope) for child in self.children)


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

    def evaluate(self, ctx: _Context, scope: frozenset[int] | None) -> _Outcome:
        outcomes = [child.evaluate(ctx, scope) for child in self.children]
        held = [o for o in outcomes if o.holds]
        if held:
            return _Outcome(True, sum(o.score for o in held if o.score is not None))
        names = ", ".join(child.describe() for child in self.children)
        return _Outcome(
            False,
            0.0,
            missing=_unique(g for o in outcomes for g in o.missing),
            excluded_by=_unique(g for o in outcomes for g in o.excluded_by),
            reasons=(f"none of {names} found",),
        )

    def holds(self, ctx: _Context, scope: frozenset[int] | None) -> bool:
        return any(child.holds(ctx, scope) for child in self.children)


@dataclass(frozen=True)
class _NoneOf(_Branch):
    keyword = "not"

    def positive_groups(self) -> tuple[str, ...]:
        return ()

    def scopes(self, ctx: _Context, scope: frozenset[int] | None) -> dict[str, frozenset[int] | None]:
        return {}

    def evaluate(self, ctx: _Context, scope: frozenset[int] | None) -> _Outcome:
        fired = tuple(c.describe() for c in self.children if c.holds(ctx, scope))
        return _Outcome(not fired, None, excluded_by=fired, reasons=tuple(f"excluded by {f}" for f in fired))

    def holds(self, ctx: _Context, scope: frozenset[int] | None) -> bool:
        return not any(child.holds(ctx, scope) for child in self.children)


@dataclass(frozen=True)
class _Near(_Branch):
    keyword = "near"
    _groups: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_groups", self.positive_groups())  # looked up once per paragraph

    def evaluate(self, ctx: _Context, scope: frozenset[int] | None) -> _Outcome:
        if not all(child.holds(ctx, scope) for child in self.children):
            return _all_of([child.evaluate(ctx, scope) for child in self.children])
        together = self.together(ctx, scope)
        if not together:
            names = ", ".join(child.describe() for child in self.children)
            return _Outcome(False, 0.0, reasons=(f"{names} never in the same paragraph",))
        # only the matches in paragraphs where everything meets count towards the score
        return _all_of([child.evaluate(ctx, together) for child in self.children])

    def holds(self, ctx: _Context, scope: frozenset[int] | None) -> bool:
        return all(child.holds(ctx, scope) for child in self.children) and bool(self.together(ctx, scope))

    def scopes(self, ctx: _Context, scope: frozenset[int] | None) -> dict[str, frozenset[int] | None]:
        return super().scopes(ctx, self.together(ctx, scope))

    def together(self, ctx: _Context, scope: frozenset[int] | None) -> frozenset[int]:
        """The paragraphs (TITLE_ONLY for the title alone) in which every item holds."""
        candidates = {TITLE_ONLY}
        for group in self._groups:
            hits = ctx.scan.hits.get(group)
            if hits is not None:
                candidates.update(hits.paragraphs if scope is None else hits.paragraphs & scope)
        return frozenset(
            candidate
            for candidate in candidates
            if all(child.holds(ctx, frozenset((candidate,))) for child in self.children)
        )


NO_MATCH = _Outcome(False, 0.0)
NODE_TYPES: dict[str, type[_Branch]] = {"all": _AllOf, "any": _AnyOf, "not": _NoneOf, "near": _Near}


@dataclass(frozen=True)
class _TopicRule:
    """How one topic is decided: its rule, threshold and field weights."""

    topic: Topic
    rule: _Node | None
    min_score: float
    title_weight: float
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


# Matching: one pass of one regex over a text finds the terms of every group.


@dataclass(frozen=True)
class _GroupHits:
    """Where one group matched in one text: (start, end, alias) per field."""

    title: tuple[tuple[int, int, str], ...]
    body: tuple[tuple[int, int, str], ...]
    body_paragraphs: tuple[int, ...]  # the paragraph of each body hit
    paragraphs: frozenset[int]


class _Scan:
    """Every group's matches in one title and body, found once and shared by all topics."""

    __slots__ = ("body", "breaks", "hits", "title")

    def __init__(self, matcher: _Matcher, title: str, body: str) -> None:
        self.title = title
        self.body = body
        in_title = matcher.find(title) if title else {}
        in_body = matcher.find(body) if body else {}
        self.breaks = [m.start() for m in LINE_BREAK.finditer(body)] if in_body else []
        self.hits: dict[str, _GroupHits] = {}
        for group in in_title.keys() | in_body.keys():
            found = tuple(in_body.get(group, ()))
            where = tuple(bisect_right(self.breaks, start) for start, _, _ in found)
            self.hits[group] = _GroupHits(tuple(in_title.get(group, ())), found, where, frozenset(where))

    def paragraph_span(self, paragraph: int) -> tuple[int, int]:
        """[start, end) of a body paragraph, by its number of preceding line breaks."""
        start = self.breaks[paragraph - 1] + 1 if paragraph > 0 else 0
        end = self.breaks[paragraph] if paragraph < len(self.breaks) else len(self.body)
        return start, end


@dataclass(frozen=True)
class _Context:
    """A scan seen through one topic's field weights."""

    scan: _Scan
    title_weight: float
    body_weight: float

    def present(self, group: str, scope: frozenset[int] | None) -> bool:
        hits = self.scan.hits.get(group)
        if hits is None:
            return False
        return scope is None or bool(hits.title) or not scope.isdisjoint(hits.paragraphs)

    def score(self, group: str, scope: frozenset[int] | None = None) -> float:
        hits = self.scan.hits.get(group)
        if hits is None:
            return 0.0
        in_body = len(hits.body) if scope is None else sum(p in scope for p in hits.body_paragraphs)
        return len(hits.title) * self.title_weight + in_body * self.body_weight


class _Matcher:
    """Finds the terms of every group in one regex pass over a text.

    All terms share one prefix tree rendered as a regex, so a text is scanned once whatever the
    number of groups. A term listed in several groups credits all of them. Where a term of one
    group lies inside a longer match of another ("Korea" inside "North Korea"), the regex reports
    only the longer one, so each term keeps a short list of such shorter terms to look for inside
    its matches. Within one group overlapping terms count once, the longer winning.
    """

    def __init__(self, groups: dict[str, list[tuple[str, bool]]]) -> None:
        index: dict[tuple[str, ...], int] = {}
        self._owners: list[list[tuple[str, str]]] = []
        for group, terms in groups.items():
            for alias, case_sensitive in terms:
                units = _term_units(alias, case_sensitive)
                if units not in index:
                    index[units] = len(self._owners)
                    self._owners.append([])
                self._owners[index[units]].append((group, alias))
        self._pattern, self._term_of_capture = _prefix_tree_regex(list(index))
        chunks = [_word_chunks(owners[0][1]) for owners in self._owners]
        self._inner: list[list[tuple[str, str, re.Pattern[str]]]] = []
        for outer, owners in enumerate(self._owners):
            outer_groups = {group for group, _ in owners}
            self._inner.append(
                [
                    (group, alias, re.compile(rf"(?<!\w){''.join(units)}(?!\w)"))
                    for inner, units in enumerate(index)
                    if inner != outer and _may_start_inside(chunks[inner], chunks[outer])
                    for group, alias in self._owners[inner]
                    if group not in outer_groups
                ]
            )

    def find(self, text: str) -> dict[str, list[tuple[int, int, str]]]:
        """Matches per group as (start, end, alias), in text order."""
        found: dict[str, list[tuple[int, int, str]]] = {}
        nested = False
        for match in self._pattern.finditer(text):
            term = self._term_of_capture[(match.lastindex or 1) - 1]
            start, end = match.span()
            for group, alias in self._owners[term]:
                found.setdefault(group, []).append((start, end, alias))
            if not self._inner[term]:
                continue
            word_starts = [word.start() for word in WORD_CHARS.finditer(text, start, end)]
            for group, alias, pattern in self._inner[term]:
                for position in word_starts:
                    inner = pattern.match(text, position)
                    if inner is not None:
                        found.setdefault(group, []).append((position, inner.end(), alias))
                        nested = True
        if nested:
            found = {group: _longest_first(hits) for group, hits in found.items()}
        return found


class _TreeNode:
    """One step of the prefix tree of terms."""

    __slots__ = ("children", "depth", "term")

    def __init__(self) -> None:
        self.children: dict[str, _TreeNode] = {}
        self.depth = 0
        self.term: int | None = None


def _prefix_tree_regex(terms: list[tuple[str, ...]]) -> tuple[re.Pattern[str], tuple[int, ...]]:
    """A regex matching any of the unit sequences; capture group i+1 closes term order[i]."""
    root = _TreeNode()
    for number, units in enumerate(terms):
        node = root
        for unit in units:
            node = node.children.setdefault(unit, _TreeNode())
        node.term = number
    _set_depth(root)
    order: list[int] = []

    def render(node: _TreeNode) -> str:
        # longer continuations first, so the longest term at a position wins
        branches = [unit + render(child) for unit, child in sorted(node.children.items(), key=_deepest)]
        if node.term is not None:
            order.append(node.term)
            branches.append("()")
        return branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"

    body = render(root)
    return re.compile(rf"(?<!\w){body}(?!\w)"), tuple(order)


def _set_depth(node: _TreeNode) -> int:
    node.depth = max((1 + _set_depth(child) for child in node.children.values()), default=0)
    return node.depth


def _deepest(item: tuple[str, _TreeNode]) -> int:
    return -item[1].depth


def _term_units(term: str, case_sensitive: bool) -> tuple[str, ...]:
    """An alias as regex pieces: one per character, word break or '*' ending."""
    units: list[str] = []
    for number, word in enumerate(w for w in TERM_WORD_BREAK.split(term) if w):
        if number:
            units.append(TEXT_WORD_BREAK)
        stem = word.removesuffix("*")
        units.extend(_char_pattern(char, case_sensitive) for char in stem)
        if stem != word:
            units.append(r"\w*")
    return tuple(units)


def _char_pattern(char: str, case_sensitive: bool) -> str:
    if char in APOSTROPHE_CHARS:
        return APOSTROPHES
    lower, upper = char.lower(), char.upper()
    if case_sensitive or lower == upper:
        return re.escape(char)
    if len(lower) == 1 and len(upper) == 1:
        return f"[{upper}{lower}]"  # a class, not (?i:), keeps the regex engine's fast branch checks
    return f"(?i:{re.escape(char)})"


def _may_start_inside(inner: list[tuple[str, bool]], outer: list[tuple[str, bool]]) -> bool:
    """Whether a term could begin at a word inside a match of another (a cheap test; matching decides)."""
    if not inner:
        return True
    head, head_extends = inner[0]
    return any(
        chunk == head or (head_extends and chunk.startswith(head)) or (extends and head.startswith(chunk))
        for chunk, extends in outer
    )


def _word_chunks(term: str) -> list[tuple[str, bool]]:
    """Case-folded runs of word characters in a term, each flagged when a '*' lets it run on.

    A term that starts with a non-word character gets no chunks, so it is tried inside every match.
    """
    if not WORD_CHARS.match(term):
        return []
    chunks: list[tuple[str, bool]] = []
    for word in (w for w in TERM_WORD_BREAK.split(term.casefold()) if w):
        stem = word.removesuffix("*")
        runs = WORD_CHARS.findall(stem)
        wildcard_ends_run = stem != word and stem[-1:].isalnum()
        chunks.extend((run, wildcard_ends_run and i == len(runs) - 1) for i, run in enumerate(runs))
    return chunks


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
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.fail(where, f"{name}: expected a number >= 0, got {value!r}")
        return float(value)

    def weights(self, where: str, data: Any, base: dict[str, float]) -> dict[str, float]:
        if data is None:
            return dict(base)
        if not isinstance(data, dict):
            self.fail(where, "weights: expected a mapping of title/body to numbers")
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
        for word in words:
            stem = word.removesuffix("*")
            if "*" in stem:
                self.fail(where, f"{key}: term {item!r}: '*' may only end a word")
            if stem != word and len(stem) < MIN_WILDCARD_STEM:
                need = f"a wildcard needs {MIN_WILDCARD_STEM}+ characters before it"
                self.fail(where, f"{key}: term {item!r}: {need}")
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
            rule = self.rule(where, entry["rule"], terms, "rule")
            if not rule.positive_groups():
                self.fail(where, "rule: needs at least one group outside 'not'")
        topic_weights = self.weights(where, entry.get("weights"), weights)
        return _TopicRule(
            topic=Topic(tid, label.strip(), description.strip(), parent),
            rule=rule,
            min_score=self.number(where, "min_score", entry.get("min_score", min_score)),
            title_weight=topic_weights["title"],
            body_weight=topic_weights["body"],
            groups=rule.positive_groups() if rule is not None else (),
            all_groups=rule.all_groups() if rule is not None else (),
            description=rule.describe() if rule is not None else "",
        )

    def rule(self, where: str, node: Any, terms: dict[str, Any], path: str) -> _Node:
        if isinstance(node, str):
            if node not in terms:
                self.fail(where, f"{path}: unknown group {node!r}")
            return _GroupRef(node)
        if not isinstance(node, dict) or not node:
            self.fail(where, f"{path}: expected a group name or a mapping with {', '.join(RULE_KEYS)}")
        parts: list[_Node] = []
        for key, items in node.items():
            if key not in RULE_KEYS:
                self.fail(where, f"{path}: unknown rule key {key!r} (expected {', '.join(RULE_KEYS)})")
            if not isinstance(items, list) or not items:
                self.fail(where, f"{path}.{key}: expected a non-empty list")
            children = tuple(
                self.rule(where, item, terms, f"{path}.{key}[{i}]") for i, item in enumerate(items)
            )
            parts.append(NODE_TYPES[key](children))
        return parts[0] if len(parts) == 1 else _AllOf(tuple(parts))

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


# Evidence and small helpers.


def _term_counts(hits: _GroupHits | None) -> dict[str, int]:
    if hits is None:
        return {}
    return dict(Counter(alias for _, _, alias in (*hits.title, *hits.body)))


def _group_evidence(verdict: _Verdict, scopes: dict[str, frozenset[int] | None]) -> dict[str, Any]:
    """Per required group: the points that counted, every matched term with its count, first offsets."""
    evidence: dict[str, Any] = {}
    for name in verdict.rule.groups:
        hits = verdict.context.scan.hits.get(name)
        if hits is None:
            continue
        offsets = {
            field_name: [[start, end] for start, end, _ in found[:MAX_OFFSETS]]
            for field_name, found in (("title", hits.title), ("body", hits.body))
            if found
        }
        evidence[name] = {
            "score": verdict.context.score(name, scopes.get(name)),
            "terms": _term_counts(hits),
            "offsets": offsets,
        }
    return evidence


def _snippet_evidence(
    verdict: _Verdict, groups: dict[str, Any], scopes: dict[str, frozenset[int] | None]
) -> dict[str, Any] | None:
    """Context around the first counted match of the weakest group: what a reviewer should check first."""
    if not groups:
        return None
    name = min(groups, key=lambda g: groups[g]["score"])  # ties keep rule order
    hits = verdict.context.scan.hits[name]
    scope = scopes.get(name)
    in_scope = [
        hit for hit, p in zip(hits.body, hits.body_paragraphs, strict=True) if scope is None or p in scope
    ]
    field_name, text, found = ("body", verdict.context.scan.body, in_scope)
    if not found:
        field_name, text, found = ("title", verdict.context.scan.title, list(hits.title))
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
    piece = " ".join(text[low:high].split())[:budget]
    return ("…" if low > para_start else "") + piece + ("…" if high < para_end else "")


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _ancestors(tid: str, rules: dict[str, _TopicRule]) -> tuple[str, ...]:
    found = []
    parent = rules[tid].topic.parent
    while parent is not None:
        found.append(parent)
        parent = rules[parent].topic.parent
    return tuple(found)

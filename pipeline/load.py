"""Batched, idempotent upserts of articles, story clusters and topics; the dedup decision is taken under lock."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, text

from pipeline import neardup
from pipeline.models import Article, TopicHit
from pipeline.topics import Taxonomy

LOGGER = logging.getLogger(__name__)

# what makes a stored article "changed"; the URL is not among them: another URL of the same article (a feed
# link with other parameters, an AMP copy) is a duplicate, and the row keeps the URL it was first seen at
COMPARED_FIELDS = ("title", "author", "published_at", "language", "content_hash")
# a story's representative: its earliest copy, ties by longest body, then the first stored
REPRESENTATIVE_ORDER = "published_at NULLS LAST, word_count DESC, id"


@dataclass(frozen=True)
class LoadItem:
    """One extracted article and the feed entry it came from."""

    entry_id: int
    article: Article


@dataclass
class LoadOutcome:
    inserted: int = 0
    updated: int = 0
    duplicates: int = 0
    tagged: int = 0
    joined: int = 0  # inserted articles that joined a story cluster already stored or founded in the batch
    unchanged: int = 0  # items that gave their own stored article again, as it is (a replay)
    retagged: int = 0  # of those, articles whose topic rows changed (new rules)

    @property
    def loaded(self) -> int:
        return self.inserted + self.updated


def lock_key(kind: str, value: str) -> int:
    """A signed 64-bit advisory-lock key for one dedup key (canonical URL or content hash)."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def sync_topics(conn: Connection, taxonomy: Taxonomy) -> None:
    """Make the topics table match the taxonomy's topics (labels, descriptions, parents, rules and their
    versions) and record the taxonomy file in taxonomy_versions.

    A topic that left the taxonomy keeps its row (its article_topics are history) but frees its label, so a
    renamed id can take the label over.
    """
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key("taxonomy", "sync")})
    conn.execute(text(
        "UPDATE topics SET label = label || ' [retired ' || id || ']', updated_at = now() "
        "WHERE label = ANY(:labels) AND NOT (id = ANY(:ids))"
    ), {"labels": [t.label for t in taxonomy.topics], "ids": [t.id for t in taxonomy.topics]})
    for topic in taxonomy.topics:
        conn.execute(text(
            "INSERT INTO topics (id, label, description, parent_id, taxonomy_version, rule, rule_version) "
            "VALUES (:id, :label, :description, :parent, :version, :rule, :rule_version) "
            "ON CONFLICT (id) DO UPDATE SET label = excluded.label, description = excluded.description, "
            "  parent_id = excluded.parent_id, taxonomy_version = excluded.taxonomy_version, rule = excluded.rule, "
            "  rule_version = excluded.rule_version, updated_at = now() "
            "WHERE (topics.label, topics.description, topics.parent_id, topics.taxonomy_version, topics.rule, "
            "  topics.rule_version) IS DISTINCT FROM (excluded.label, excluded.description, excluded.parent_id, "
            "  excluded.taxonomy_version, excluded.rule, excluded.rule_version)"
        ), {"id": topic.id, "label": topic.label, "description": topic.description, "parent": topic.parent,
            "version": taxonomy.version, "rule": topic.rule, "rule_version": topic.rule_version})
    conn.execute(text(
        "INSERT INTO taxonomy_versions (version, content, topics) VALUES (:version, :content, :topics) "
        "ON CONFLICT (version) DO UPDATE SET last_synced_at = now()"
    ), {"version": taxonomy.version, "content": taxonomy.content, "topics": json.dumps(
        [{"id": t.id, "label": t.label, "parent": t.parent, "rule": t.rule, "rule_version": t.rule_version}
         for t in taxonomy.topics])})


def load_articles(
    conn: Connection,
    items: Sequence[LoadItem],
    *,
    run_id: int,
    extractor_version: str,
    taxonomy_version: str,
    scheme: neardup.Scheme = neardup.DEFAULT_SCHEME,
) -> LoadOutcome:
    """Upsert a batch in the caller's transaction, putting every new article in a story cluster.

    Dedup order: an article whose canonical URL is stored updates that row (revision + 1) when its content or
    metadata changed; else it is unchanged when it comes from the entry that loaded that row (a replay, which
    re-tags it), and a duplicate of it otherwise. A new canonical URL whose exact body is stored for the same
    outlet is a duplicate too (a URL variant that declares no canonical). Anything else is a new row: in the
    cluster of a stored copy with the same body on another outlet, else of the most similar stored near copy
    (MinHash estimate at least `scheme.threshold` among articles sharing an LSH band key), else in a new
    cluster. Advisory locks on the URL, body and band keys, taken in one sorted statement, make concurrent
    batches (mapped tasks, overlapping backfills) agree on one row per article and one cluster per story.
    """
    outcome = LoadOutcome()
    if not items:
        return outcome
    signatures = [neardup.sign(item.article.body, scheme) for item in items]
    band_keys = {key for signature in signatures for key in signature.band_keys}
    neardup.lock_keys(conn, {lock_key("url", i.article.canonical_url) for i in items}
                      | {lock_key("hash", i.article.content_hash) for i in items} | band_keys)

    plans = _plan(conn, items, signatures, scheme)
    founded = [plan.row.cluster for plan in plans if plan.action == "insert" and plan.founder]
    if founded:
        new_ids = sorted(int(row.id) for row in conn.execute(text(
            "INSERT INTO story_clusters (size) SELECT 0 FROM generate_series(1, :count) RETURNING id"
        ), {"count": len(founded)}))
        for cluster, cluster_id in zip(founded, new_ids, strict=True):
            cluster.id = cluster_id

    inserts = [plan for plan in plans if plan.action == "insert"]
    for plan, article_id in zip(inserts, _insert_articles(conn, inserts, run_id, extractor_version), strict=True):
        plan.row.id = article_id
    signed: list[tuple[int, neardup.Signature]] = []
    touched: set[int] = set()
    tagged: dict[int, Sequence[TopicHit]] = {}
    retag: dict[int, Sequence[TopicHit]] = {}
    marks: list[tuple[int, str, int]] = []
    for plan in plans:
        article, row = plan.item.article, plan.row
        if plan.action == "unchanged":
            retag[_known_id(row)] = article.topics
            outcome.unchanged += 1
            marks.append((plan.item.entry_id, "loaded", _known_id(row)))
            continue
        if plan.action == "duplicate":
            marks.append((plan.item.entry_id, "duplicate", _known_id(row)))
            outcome.duplicates += 1
            continue
        if plan.action == "insert":
            outcome.inserted += 1
            outcome.joined += not plan.founder
        else:
            _update_article(conn, _known_id(row), article, run_id, extractor_version)
            outcome.updated += 1
        tagged[_known_id(row)] = article.topics
        outcome.tagged += bool(article.topics)
        marks.append((plan.item.entry_id, "loaded", _known_id(row)))
        signed.append((_known_id(row), plan.signature))
        touched.add(_cluster_id(row))
    if tagged:
        replace_topics(conn, tagged, taxonomy_version, run_id)
    if retag:
        outcome.retagged = replace_topics(conn, retag, taxonomy_version, run_id).articles_changed
    _mark_entries(conn, run_id, marks)
    neardup.store_signatures(conn, scheme, signed)
    _refresh_clusters(conn, sorted(touched))
    return outcome


@dataclass(eq=False)
class _Cluster:
    """A story cluster as a batch sees it; one founded by the batch gets its id before the rows are written."""

    id: int | None = None


@dataclass(eq=False)
class _Row:
    """An article row as a batch sees it; one inserted by the batch gets its id when it is written."""

    id: int | None
    cluster: _Cluster
    source: str | None = None


@dataclass(eq=False)
class _Signed:
    row: _Row
    minhash: np.ndarray


@dataclass
class _Plan:
    item: LoadItem
    signature: neardup.Signature
    action: str  # "insert", "update", "unchanged" or "duplicate"
    row: _Row
    founder: bool = False  # an inserted article that starts a new cluster


def _loaded_by(conn: Connection, items: Sequence[LoadItem]) -> dict[int, int]:
    """The article each of these entries loaded before (entry id to article id), for those that did."""
    return {int(row.id): int(row.article_id) for row in conn.execute(text(
        "SELECT id, article_id FROM feed_entries WHERE id = ANY(:ids) AND status = 'loaded' "
        "AND article_id IS NOT NULL"
    ), {"ids": [item.entry_id for item in items]})}


def _plan(conn: Connection, items: Sequence[LoadItem], signatures: Sequence[neardup.Signature],
          scheme: neardup.Scheme) -> list[_Plan]:
    """Decide what becomes of each item, with three lookups for the whole batch (URL, body, band keys)."""
    by_url = {row.canonical_url: row for row in conn.execute(text(
        "SELECT id, canonical_url, cluster_id, source, title, author, published_at, language, content_hash "
        "FROM articles WHERE canonical_url = ANY(:urls)"
    ), {"urls": [i.article.canonical_url for i in items]})}
    # which entries loaded the stored articles: asked only when one of them is stored (a replay, a re-listing)
    loaded_by = _loaded_by(conn, items) if by_url else {}
    clusters: dict[int, _Cluster] = {}

    def stored_cluster(cluster_id: int) -> _Cluster:
        return clusters.setdefault(cluster_id, _Cluster(cluster_id))

    by_hash: dict[str, list[_Row]] = {}
    for row in conn.execute(text(
        "SELECT id, content_hash, source, cluster_id FROM articles WHERE content_hash = ANY(:hashes) ORDER BY id"
    ), {"hashes": [i.article.content_hash for i in items]}):
        by_hash.setdefault(row.content_hash, []).append(_Row(int(row.id), stored_cluster(int(row.cluster_id)),
                                                             row.source))
    by_band: dict[int, list[_Signed]] = {}

    def remember(row: _Row, minhash: np.ndarray, keys: Iterable[int]) -> None:
        entry = _Signed(row, minhash)
        for key in keys:
            by_band.setdefault(key, []).append(entry)

    for stored in neardup.find_candidates(conn, scheme, (k for s in signatures for k in s.band_keys)):
        remember(_Row(stored.article_id, stored_cluster(stored.cluster_id)), stored.minhash, stored.band_keys)

    plans: list[_Plan] = []
    in_batch: dict[str, _Row] = {}
    for item, signature in zip(items, signatures, strict=True):
        article = item.article
        if article.canonical_url in in_batch:
            plans.append(_Plan(item, signature, "duplicate", in_batch[article.canonical_url]))
            continue
        known = by_url.get(article.canonical_url)
        if known is not None:
            row = _Row(int(known.id), stored_cluster(int(known.cluster_id)), known.source)
            in_batch[article.canonical_url] = row
            if _differs(known, article):
                plans.append(_Plan(item, signature, "update", row))
                by_hash.setdefault(article.content_hash, []).append(row)
                remember(row, signature.minhash, signature.band_keys)
            elif loaded_by.get(item.entry_id) == row.id:
                plans.append(_Plan(item, signature, "unchanged", row))  # its own article, processed again
            else:
                # another feed item (another feed, another URL) pointing at an article already stored
                plans.append(_Plan(item, signature, "duplicate", row))
            continue
        same_body = by_hash.get(article.content_hash, [])
        same_outlet = next((row for row in same_body if row.source == article.source), None)
        if same_outlet is not None:
            plans.append(_Plan(item, signature, "duplicate", same_outlet))
            in_batch[article.canonical_url] = same_outlet
            continue
        match = same_body[0] if same_body else _nearest(signature, by_band, scheme.threshold)
        row = _Row(None, match.cluster if match else _Cluster(), article.source)
        plans.append(_Plan(item, signature, "insert", row, founder=match is None))
        in_batch[article.canonical_url] = row
        by_hash.setdefault(article.content_hash, []).append(row)
        remember(row, signature.minhash, signature.band_keys)
    return plans


def _nearest(signature: neardup.Signature, by_band: dict[int, list[_Signed]], threshold: float) -> _Row | None:
    """The most similar article sharing a band key, if similar enough; ties go to the oldest cluster."""
    best: tuple[float, float, int] | None = None
    chosen: _Row | None = None
    seen: set[int] = set()
    for key in signature.band_keys:
        for entry in by_band.get(key, ()):
            if id(entry) in seen:
                continue
            seen.add(id(entry))
            score = neardup.similarity(signature.minhash, entry.minhash)
            if score < threshold:
                continue
            cluster_id = entry.row.cluster.id
            rank = (-score, float(cluster_id) if cluster_id is not None else float("inf"), len(seen))
            if best is None or rank < best:
                best, chosen = rank, entry.row
    return chosen


def _known_id(row: _Row) -> int:
    if row.id is None:
        raise RuntimeError("an article row was used before it was written")
    return row.id


def _cluster_id(row: _Row) -> int:
    if row.cluster.id is None:
        raise RuntimeError("a story cluster was used before it was created")
    return row.cluster.id


def _refresh_clusters(conn: Connection, cluster_ids: Sequence[int]) -> None:
    """Recompute size, outlets, dates and representative of these clusters from their articles.

    The rows are locked first, in id order, so the recomputation (a new statement, hence a new snapshot)
    sees the articles of any concurrent batch that touched the same cluster and committed before us.
    """
    if not cluster_ids:
        return
    conn.execute(text("SELECT id FROM story_clusters WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE"),
                 {"ids": list(cluster_ids)})
    conn.execute(text(
        "UPDATE story_clusters AS c SET representative_id = s.representative_id, size = s.size, "
        "  outlets = s.outlets, first_published_at = s.first_published_at, last_published_at = s.last_published_at, "
        "  first_seen_at = s.first_seen_at, last_seen_at = s.last_seen_at, updated_at = now() "
        "FROM (SELECT cluster_id, count(*) AS size, array_agg(DISTINCT source ORDER BY source) AS outlets, "
        "        min(published_at) AS first_published_at, max(published_at) AS last_published_at, "
        "        min(first_seen_at) AS first_seen_at, max(first_seen_at) AS last_seen_at, "
        f"        (array_agg(id ORDER BY {REPRESENTATIVE_ORDER}))[1] AS representative_id "
        "      FROM articles WHERE cluster_id = ANY(:ids) GROUP BY cluster_id) AS s "
        "WHERE c.id = s.cluster_id AND (c.representative_id, c.size, c.outlets, c.first_published_at, "
        "  c.last_published_at, c.first_seen_at, c.last_seen_at) IS DISTINCT FROM (s.representative_id, s.size, "
        "  s.outlets, s.first_published_at, s.last_published_at, s.first_seen_at, s.last_seen_at)"
    ), {"ids": list(cluster_ids)})


def _differs(known: object, article: Article) -> bool:
    return any(getattr(known, name) != getattr(article, name) for name in COMPARED_FIELDS)


def _article_params(article: Article, run_id: int, extractor_version: str) -> dict[str, object]:
    return {
        "canonical_url": article.canonical_url, "url": article.url, "title": article.title,
        "author": article.author, "published_at": article.published_at, "language": article.language,
        "source": article.source, "source_id": article.source_id, "body": article.body,
        "word_count": article.word_count, "content_hash": article.content_hash,
        "extractor_version": extractor_version, "run_id": run_id,
    }


def _insert_articles(conn: Connection, plans: Sequence[_Plan], run_id: int, extractor_version: str) -> list[int]:
    """Insert the batch's new articles in one statement; returns their ids in the order of `plans`."""
    if not plans:
        return []
    columns = ("canonical_url", "url", "title", "author", "published_at", "language", "source", "source_id",
               "body", "word_count", "content_hash")
    types = ("text", "text", "text", "text", "timestamptz", "text", "text", "bigint", "text", "integer", "text")
    rows = conn.execute(text(
        f"INSERT INTO articles ({', '.join(columns)}, extractor_version, first_run_id, last_run_id, cluster_id) "
        f"SELECT {', '.join('a.' + name for name in columns)}, :extractor_version, :run_id, :run_id, a.cluster_id "
        "FROM unnest(" + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in zip(columns, types, strict=True))
        + ", CAST(:cluster_id AS bigint[])) AS a(" + ", ".join(columns) + ", cluster_id) "
        "ON CONFLICT (canonical_url) DO UPDATE SET last_run_id = excluded.last_run_id "
        "RETURNING id, canonical_url"
    ), {**{name: [getattr(plan.item.article, name) for plan in plans] for name in columns},
        "cluster_id": [_cluster_id(plan.row) for plan in plans], "extractor_version": extractor_version,
        "run_id": run_id})
    ids = {row.canonical_url: int(row.id) for row in rows}
    return [ids[plan.item.article.canonical_url] for plan in plans]


def _update_article(conn: Connection, article_id: int, article: Article, run_id: int,
                    extractor_version: str) -> None:
    """An article edited in place: same row, same cluster, one more revision."""
    conn.execute(text(
        "UPDATE articles SET title = :title, author = :author, published_at = :published_at, "
        "  language = :language, source = :source, source_id = :source_id, body = :body, "
        "  word_count = :word_count, content_hash = :content_hash, extractor_version = :extractor_version, "
        "  last_run_id = :run_id, revision = revision + 1, updated_at = now() "
        "WHERE id = :id"
    ), {**_article_params(article, run_id, extractor_version), "id": article_id})


@dataclass(frozen=True)
class TopicChanges:
    """What writing a batch's topic rows changed."""

    rows_added: int
    rows_updated: int
    rows_removed: int
    articles_changed: int


def replace_topics(conn: Connection, tagged: dict[int, Sequence[TopicHit]], taxonomy_version: str,
                   run_id: int | None = None) -> TopicChanges:
    """Make each article's topic rows equal to its hits, in one statement for all of them. A row whose score,
    evidence and rule version would not change is not touched (it keeps its tagged_at and the taxonomy version
    that wrote it), so a rerun, or a taxonomy edit elsewhere, leaves it as it was. Loading and re-tagging
    (pipeline.retag) both write topics through here; `run_id` is the ingestion run writing them, if any."""
    articles, topics, scores, evidence = [], [], [], []
    for article_id, hits in tagged.items():
        for hit in hits:
            articles.append(article_id)
            topics.append(hit.topic_id)
            scores.append(hit.score)
            evidence.append(json.dumps(hit.evidence, sort_keys=True))
    row = conn.execute(text(
        "WITH wanted AS ("
        "  SELECT * FROM unnest(CAST(:articles AS bigint[]), CAST(:topics AS text[]), CAST(:scores AS float8[]), "
        "    CAST(:evidence AS jsonb[])) AS w(article_id, topic_id, score, evidence)), "
        "removed AS ("
        "  DELETE FROM article_topics AS at WHERE at.article_id = ANY(CAST(:ids AS bigint[])) AND NOT EXISTS ("
        "    SELECT 1 FROM wanted AS w WHERE w.article_id = at.article_id AND w.topic_id = at.topic_id) "
        "  RETURNING at.article_id), "
        "written AS ("
        "  INSERT INTO article_topics (article_id, topic_id, score, evidence, taxonomy_version, rule_version, "
        "    last_run_id) "
        "  SELECT article_id, topic_id, score, evidence, :version, evidence ->> 'rule_version', "
        "    CAST(:run_id AS bigint) FROM wanted "
        "  ON CONFLICT (article_id, topic_id) DO UPDATE SET score = excluded.score, evidence = excluded.evidence, "
        "    taxonomy_version = excluded.taxonomy_version, rule_version = excluded.rule_version, tagged_at = now(), "
        "    last_run_id = excluded.last_run_id "
        "  WHERE (article_topics.score, article_topics.evidence, article_topics.rule_version) "
        "    IS DISTINCT FROM (excluded.score, excluded.evidence, excluded.rule_version) "
        "  RETURNING article_id, (xmax = 0) AS inserted) "
        "SELECT (SELECT count(*) FROM removed) AS removed, "
        "  (SELECT count(*) FROM written WHERE inserted) AS added, "
        "  (SELECT count(*) FROM written WHERE NOT inserted) AS updated, "
        "  (SELECT count(DISTINCT article_id) FROM (SELECT article_id FROM removed "
        "    UNION ALL SELECT article_id FROM written) AS touched) AS changed"
    ), {"articles": articles, "topics": topics, "scores": scores, "evidence": evidence, "ids": list(tagged),
        "version": taxonomy_version, "run_id": run_id}).one()
    return TopicChanges(rows_added=int(row.added), rows_updated=int(row.updated), rows_removed=int(row.removed),
                        articles_changed=int(row.changed))


def _mark_entries(conn: Connection, run_id: int, marks: Sequence[tuple[int, str, int]]) -> None:
    """Record what became of each feed entry, as (entry id, status, article id), in one statement; an entry
    already recorded so is not written (it keeps the run that last changed it)."""
    if not marks:
        return
    conn.execute(text(
        "UPDATE feed_entries AS e SET status = m.status, article_id = m.article_id, error = NULL, "
        "  retryable = false, last_run_id = :run_id, updated_at = now() "
        "FROM unnest(CAST(:ids AS bigint[]), CAST(:statuses AS text[]), CAST(:articles AS bigint[])) "
        "  AS m(id, status, article_id) WHERE e.id = m.id "
        "  AND (e.status, e.article_id, e.error, e.retryable) IS DISTINCT FROM (m.status, m.article_id, NULL, false)"
    ), {"run_id": run_id, "ids": [mark[0] for mark in marks], "statuses": [mark[1] for mark in marks],
        "articles": [mark[2] for mark in marks]})

"""Batched, idempotent upserts of articles and their topics, with the dedup decision taken under lock."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, text

from pipeline.models import Article, TopicHit
from pipeline.topics import Taxonomy

LOGGER = logging.getLogger(__name__)

# what makes a stored article "changed"; the URL is not among them: another URL of the same article (a feed
# link with other parameters, an AMP copy) is a duplicate, and the row keeps the URL it was first seen at
COMPARED_FIELDS = ("title", "author", "published_at", "language", "content_hash")


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

    @property
    def loaded(self) -> int:
        return self.inserted + self.updated


def lock_key(kind: str, value: str) -> int:
    """A signed 64-bit advisory-lock key for one dedup key (canonical URL or content hash)."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def sync_topics(conn: Connection, taxonomy: Taxonomy) -> None:
    """Make the topics table match the taxonomy's topics (labels, descriptions, parents, version).

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
            "INSERT INTO topics (id, label, description, parent_id, taxonomy_version) "
            "VALUES (:id, :label, :description, :parent, :version) "
            "ON CONFLICT (id) DO UPDATE SET label = excluded.label, description = excluded.description, "
            "  parent_id = excluded.parent_id, taxonomy_version = excluded.taxonomy_version, updated_at = now() "
            "WHERE (topics.label, topics.description, topics.parent_id, topics.taxonomy_version) "
            "  IS DISTINCT FROM (excluded.label, excluded.description, excluded.parent_id, excluded.taxonomy_version)"
        ), {"id": topic.id, "label": topic.label, "description": topic.description, "parent": topic.parent,
            "version": taxonomy.version})


def load_articles(
    conn: Connection,
    items: Sequence[LoadItem],
    *,
    run_id: int,
    extractor_version: str,
    taxonomy_version: str,
) -> LoadOutcome:
    """Upsert a batch in the caller's transaction.

    Dedup order: an article whose canonical URL is stored updates that row when its content or metadata
    changed, else it is a duplicate of it; a new canonical URL whose exact body is stored under another URL is
    a duplicate of that row; anything else is inserted. Advisory locks on both keys, taken in a fixed order,
    make concurrent batches (mapped tasks, overlapping backfills) agree on one row per article.
    """
    outcome = LoadOutcome()
    if not items:
        return outcome
    keys = sorted({lock_key("url", i.article.canonical_url) for i in items}
                  | {lock_key("hash", i.article.content_hash) for i in items})
    # one round trip; WITH ORDINALITY keeps the sorted order, so every batch locks in the same order
    conn.execute(text(
        "SELECT count(pg_advisory_xact_lock(k.key)) FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS k(key, n)"
    ), {"keys": keys})

    by_url = {row.canonical_url: row for row in conn.execute(text(
        "SELECT id, canonical_url, url, title, author, published_at, language, content_hash FROM articles "
        "WHERE canonical_url = ANY(:urls)"
    ), {"urls": [i.article.canonical_url for i in items]})}
    by_hash = {row.content_hash: int(row.id) for row in conn.execute(text(
        "SELECT min(id) AS id, content_hash FROM articles WHERE content_hash = ANY(:hashes) GROUP BY content_hash"
    ), {"hashes": [i.article.content_hash for i in items]})}
    loaded_in_batch: dict[str, int] = {}

    for item in items:
        article = item.article
        known = by_url.get(article.canonical_url)
        if article.canonical_url in loaded_in_batch:
            _mark_entry(conn, item.entry_id, run_id, "duplicate", loaded_in_batch[article.canonical_url])
            outcome.duplicates += 1
            continue
        if known is not None:
            if _differs(known, article):
                _update_article(conn, int(known.id), article, run_id, extractor_version)
                _replace_topics(conn, int(known.id), article.topics, taxonomy_version)
                outcome.updated += 1
                outcome.tagged += bool(article.topics)
                status = "loaded"
            else:
                # another feed item (another feed, another URL) pointing at an article already stored
                outcome.duplicates += 1
                status = "duplicate"
            loaded_in_batch[article.canonical_url] = int(known.id)
            by_hash.setdefault(article.content_hash, int(known.id))
            _mark_entry(conn, item.entry_id, run_id, status, int(known.id))
            continue
        original = by_hash.get(article.content_hash)
        if original is not None:
            _mark_entry(conn, item.entry_id, run_id, "duplicate", original)
            outcome.duplicates += 1
            continue
        article_id = _insert_article(conn, article, run_id, extractor_version)
        _replace_topics(conn, article_id, article.topics, taxonomy_version)
        by_hash[article.content_hash] = article_id
        loaded_in_batch[article.canonical_url] = article_id
        _mark_entry(conn, item.entry_id, run_id, "loaded", article_id)
        outcome.inserted += 1
        outcome.tagged += bool(article.topics)
    return outcome


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


def _insert_article(conn: Connection, article: Article, run_id: int, extractor_version: str) -> int:
    row = conn.execute(text(
        "INSERT INTO articles (canonical_url, url, title, author, published_at, language, source, source_id, "
        "  body, word_count, content_hash, extractor_version, first_run_id, last_run_id) "
        "VALUES (:canonical_url, :url, :title, :author, :published_at, :language, :source, :source_id, "
        "  :body, :word_count, :content_hash, :extractor_version, :run_id, :run_id) "
        "ON CONFLICT (canonical_url) DO UPDATE SET last_run_id = excluded.last_run_id "
        "RETURNING id"
    ), _article_params(article, run_id, extractor_version)).one()
    return int(row.id)


def _update_article(conn: Connection, article_id: int, article: Article, run_id: int,
                    extractor_version: str) -> None:
    conn.execute(text(
        "UPDATE articles SET title = :title, author = :author, published_at = :published_at, "
        "  language = :language, source = :source, source_id = :source_id, body = :body, "
        "  word_count = :word_count, content_hash = :content_hash, extractor_version = :extractor_version, "
        "  last_run_id = :run_id, updated_at = now() "
        "WHERE id = :id"
    ), {**_article_params(article, run_id, extractor_version), "id": article_id})


def _replace_topics(conn: Connection, article_id: int, hits: Sequence[TopicHit], taxonomy_version: str) -> None:
    """Make the article's topic rows equal to `hits`, in one statement; rows that would not change are not
    touched, so a rerun leaves their tagged_at as it was."""
    conn.execute(text(
        "WITH wanted AS ("
        "  SELECT * FROM unnest(CAST(:topics AS text[]), CAST(:scores AS float8[]), CAST(:evidence AS jsonb[]))"
        "    AS w(topic_id, score, evidence)), "
        "removed AS ("
        "  DELETE FROM article_topics WHERE article_id = :id AND NOT (topic_id = ANY(CAST(:topics AS text[])))) "
        "INSERT INTO article_topics (article_id, topic_id, score, evidence, taxonomy_version) "
        "SELECT :id, topic_id, score, evidence, :version FROM wanted "
        "ON CONFLICT (article_id, topic_id) DO UPDATE SET score = excluded.score, "
        "  evidence = excluded.evidence, taxonomy_version = excluded.taxonomy_version, tagged_at = now() "
        "WHERE (article_topics.score, article_topics.evidence, article_topics.taxonomy_version) "
        "  IS DISTINCT FROM (excluded.score, excluded.evidence, excluded.taxonomy_version)"
    ), {"id": article_id, "topics": [hit.topic_id for hit in hits], "scores": [hit.score for hit in hits],
        "evidence": [json.dumps(hit.evidence, sort_keys=True) for hit in hits], "version": taxonomy_version})


def _mark_entry(conn: Connection, entry_id: int, run_id: int, status: str, article_id: int) -> None:
    conn.execute(text(
        "UPDATE feed_entries SET status = :status, article_id = :article_id, error = NULL, retryable = false, "
        "  last_run_id = :run_id, updated_at = now() WHERE id = :entry_id"
    ), {"status": status, "article_id": article_id, "run_id": run_id, "entry_id": entry_id})

-- Topic versions and re-tagging: each topic's rule version, the taxonomy files synced, a log of re-tags and a
-- view of the evidence behind every topic row. Independent of 0003/0004; applies on a database with data:
-- existing article_topics rows get rule_version NULL, which marks them stale until the next re-tag.

-- The rule written out and a hash of everything that decides the topic (rule, terms, min_score, weights,
-- child topics' rule versions); NULL until the taxonomy is next synced.
ALTER TABLE topics ADD COLUMN rule text NOT NULL DEFAULT '';
ALTER TABLE topics ADD COLUMN rule_version text;

-- The rule version that produced the row; taxonomy_version stays the file version that last wrote it.
ALTER TABLE article_topics ADD COLUMN rule_version text;
CREATE INDEX article_topics_topic_rule_version_idx ON article_topics (topic_id, rule_version);

-- re-tags select articles by publication time, else first sighting, and walk them in id order
CREATE INDEX articles_tagging_time_idx ON articles ((coalesce(published_at, first_seen_at)), id);

-- Every taxonomy file the pipeline has tagged with: its bytes and its topics, so the rule behind any
-- article_topics.taxonomy_version can be read back.
CREATE TABLE taxonomy_versions (
    version          text        NOT NULL,
    content          text        NOT NULL,
    topics           jsonb       NOT NULL,
    first_synced_at  timestamptz NOT NULL DEFAULT now(),
    last_synced_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT taxonomy_versions_pkey PRIMARY KEY (version)
);

-- One row per re-tag (`python -m pipeline topics retag`, or a run of the news_retag DAG).
CREATE TABLE retag_runs (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    run_key           text        NOT NULL,
    trigger           text        NOT NULL,
    taxonomy_version  text        NOT NULL,
    interval_start    timestamptz,
    interval_end      timestamptz,
    status            text        NOT NULL DEFAULT 'running',
    articles          integer     NOT NULL DEFAULT 0,
    articles_changed  integer     NOT NULL DEFAULT 0,
    rows_added        integer     NOT NULL DEFAULT 0,
    rows_updated      integer     NOT NULL DEFAULT 0,
    rows_removed      integer     NOT NULL DEFAULT 0,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    error             text,
    CONSTRAINT retag_runs_pkey PRIMARY KEY (id),
    CONSTRAINT retag_runs_run_key_key UNIQUE (run_key),
    CONSTRAINT retag_runs_trigger_check CHECK (trigger IN ('cli', 'airflow')),
    CONSTRAINT retag_runs_status_check CHECK (status IN ('running', 'success', 'failed'))
);

-- Why an article has a topic: one row per matched term of each group the rule required, with its count,
-- the group's points, the snippet and whether the row is current (its rule version is the topic's).
CREATE VIEW article_topic_evidence AS
SELECT
    at.article_id, a.title, a.canonical_url, a.published_at, at.topic_id, t.label AS topic, at.score,
    (at.evidence ->> 'min_score')::double precision AS min_score, at.evidence ->> 'rule' AS rule,
    g.key AS term_group, (g.value ->> 'score')::double precision AS group_score, term.key AS term,
    term.value::integer AS term_count, at.evidence -> 'snippet' ->> 'text' AS snippet,
    at.evidence -> 'via_children' AS via_children, at.taxonomy_version, at.rule_version,
    coalesce(at.rule_version = t.rule_version, false) AS current, at.tagged_at
FROM article_topics AS at
JOIN articles AS a ON a.id = at.article_id
JOIN topics AS t ON t.id = at.topic_id
LEFT JOIN LATERAL jsonb_each(at.evidence -> 'groups') AS g ON true
LEFT JOIN LATERAL jsonb_each_text(g.value -> 'terms') AS term ON true;

-- The first schema: outlets and feeds, the entry work queue, fetched pages, articles, topics and run accounting.
-- Applied by `python -m pipeline db migrate` in one transaction. Never edit after it lands: add 0002_*.sql.

CREATE TABLE sources (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    name        text        NOT NULL,
    homepage    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sources_pkey PRIMARY KEY (id),
    CONSTRAINT sources_name_key UNIQUE (name)
);

CREATE TABLE feeds (
    id                bigint GENERATED ALWAYS AS IDENTITY,
    url               text        NOT NULL,
    source_id         bigint      NOT NULL,
    title             text,
    enabled           boolean     NOT NULL DEFAULT true,
    last_status       text,
    last_http_status  integer,
    last_error        text,
    last_polled_at    timestamptz,
    last_success_at   timestamptz,
    etag              text,
    last_modified     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feeds_pkey PRIMARY KEY (id),
    CONSTRAINT feeds_url_key UNIQUE (url),
    CONSTRAINT feeds_source_fkey FOREIGN KEY (source_id) REFERENCES sources (id),
    CONSTRAINT feeds_last_status_check CHECK (last_status IN ('ok', 'not_modified', 'malformed', 'failed'))
);

CREATE TABLE ingest_runs (
    id                   bigint GENERATED ALWAYS AS IDENTITY,
    run_key              text        NOT NULL,
    trigger              text        NOT NULL,
    interval_start       timestamptz NOT NULL,
    interval_end         timestamptz NOT NULL,
    status               text        NOT NULL DEFAULT 'running',
    started_at           timestamptz NOT NULL DEFAULT now(),
    finished_at          timestamptz,
    feeds_polled         integer     NOT NULL DEFAULT 0,
    feeds_failed         integer     NOT NULL DEFAULT 0,
    entries_seen         integer     NOT NULL DEFAULT 0,
    entries_new          integer     NOT NULL DEFAULT 0,
    pages_fetched        integer     NOT NULL DEFAULT 0,
    pages_failed         integer     NOT NULL DEFAULT 0,
    extraction_failures  integer     NOT NULL DEFAULT 0,
    duplicates           integer     NOT NULL DEFAULT 0,
    loaded               integer     NOT NULL DEFAULT 0,
    tagged               integer     NOT NULL DEFAULT 0,
    fetch_seconds        double precision NOT NULL DEFAULT 0,
    extract_seconds      double precision NOT NULL DEFAULT 0,
    tag_seconds          double precision NOT NULL DEFAULT 0,
    load_seconds         double precision NOT NULL DEFAULT 0,
    error                text,
    CONSTRAINT ingest_runs_pkey PRIMARY KEY (id),
    CONSTRAINT ingest_runs_run_key_key UNIQUE (run_key),
    CONSTRAINT ingest_runs_status_check CHECK (status IN ('running', 'success', 'failed')),
    CONSTRAINT ingest_runs_interval_check CHECK (interval_start <= interval_end)
);

CREATE TABLE feed_fetches (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    run_id       bigint      NOT NULL,
    feed_id      bigint      NOT NULL,
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL,
    http_status  integer,
    items        integer     NOT NULL DEFAULT 0,
    items_in_window integer  NOT NULL DEFAULT 0,
    duration_ms  integer     NOT NULL DEFAULT 0,
    error        text,
    CONSTRAINT feed_fetches_pkey PRIMARY KEY (id),
    CONSTRAINT feed_fetches_run_feed_key UNIQUE (run_id, feed_id),
    CONSTRAINT feed_fetches_run_fkey FOREIGN KEY (run_id) REFERENCES ingest_runs (id) ON DELETE CASCADE,
    CONSTRAINT feed_fetches_feed_fkey FOREIGN KEY (feed_id) REFERENCES feeds (id) ON DELETE CASCADE,
    CONSTRAINT feed_fetches_status_check CHECK (status IN ('ok', 'not_modified', 'malformed', 'failed'))
);
CREATE INDEX feed_fetches_feed_fetched_at_idx ON feed_fetches (feed_id, fetched_at DESC);

CREATE TABLE articles (
    id                 bigint GENERATED ALWAYS AS IDENTITY,
    canonical_url      text        NOT NULL,
    url                text        NOT NULL,
    title              text,
    author             text,
    published_at       timestamptz,
    language           text,
    source             text        NOT NULL,
    source_id          bigint,
    body               text        NOT NULL,
    word_count         integer     NOT NULL,
    content_hash       text        NOT NULL,
    extractor_version  text        NOT NULL,
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    first_run_id       bigint,
    last_run_id        bigint,
    CONSTRAINT articles_pkey PRIMARY KEY (id),
    CONSTRAINT articles_canonical_url_key UNIQUE (canonical_url),
    CONSTRAINT articles_source_fkey FOREIGN KEY (source_id) REFERENCES sources (id),
    CONSTRAINT articles_first_run_fkey FOREIGN KEY (first_run_id) REFERENCES ingest_runs (id) ON DELETE SET NULL,
    CONSTRAINT articles_last_run_fkey FOREIGN KEY (last_run_id) REFERENCES ingest_runs (id) ON DELETE SET NULL
);
CREATE INDEX articles_content_hash_idx ON articles (content_hash);
CREATE INDEX articles_published_at_idx ON articles (published_at);
CREATE INDEX articles_source_idx ON articles (source);

-- One row per feed item ever kept: the work queue between stages and the record of what became of it.
CREATE TABLE feed_entries (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    feed_id       bigint      NOT NULL,
    entry_key     text        NOT NULL,
    url           text        NOT NULL,
    guid          text,
    title         text,
    author        text,
    published_at  timestamptz,
    status        text        NOT NULL DEFAULT 'pending',
    attempts      integer     NOT NULL DEFAULT 0,
    retryable     boolean     NOT NULL DEFAULT false,
    error         text,
    article_id    bigint,
    first_run_id  bigint,
    last_run_id   bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feed_entries_pkey PRIMARY KEY (id),
    CONSTRAINT feed_entries_feed_entry_key UNIQUE (feed_id, entry_key),
    CONSTRAINT feed_entries_feed_fkey FOREIGN KEY (feed_id) REFERENCES feeds (id) ON DELETE CASCADE,
    CONSTRAINT feed_entries_article_fkey FOREIGN KEY (article_id) REFERENCES articles (id) ON DELETE SET NULL,
    CONSTRAINT feed_entries_status_check CHECK (
        status IN ('pending', 'fetched', 'loaded', 'duplicate', 'page_failed', 'extract_failed'))
);
CREATE INDEX feed_entries_feed_status_idx ON feed_entries (feed_id, status);
CREATE INDEX feed_entries_article_idx ON feed_entries (article_id);

-- The bytes of each fetched page, kept so extraction can be re-run without the network. The client compresses
-- them (zlib, faster and smaller than the server's pglz), so the column skips server-side compression.
CREATE TABLE pages (
    entry_id          bigint      NOT NULL,
    url               text        NOT NULL,
    final_url         text        NOT NULL,
    http_status       integer,
    content_type      text,
    fetched_at        timestamptz NOT NULL DEFAULT now(),
    body_encoding     text        NOT NULL DEFAULT 'zlib',
    body              bytea       NOT NULL,
    CONSTRAINT pages_pkey PRIMARY KEY (entry_id),
    CONSTRAINT pages_entry_fkey FOREIGN KEY (entry_id) REFERENCES feed_entries (id) ON DELETE CASCADE,
    CONSTRAINT pages_body_encoding_check CHECK (body_encoding IN ('zlib', 'identity'))
);
ALTER TABLE pages ALTER COLUMN body SET STORAGE EXTERNAL;

CREATE TABLE topics (
    id                text        NOT NULL,
    label             text        NOT NULL,
    description       text        NOT NULL DEFAULT '',
    parent_id         text,
    taxonomy_version  text        NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT topics_pkey PRIMARY KEY (id),
    CONSTRAINT topics_label_key UNIQUE (label),
    CONSTRAINT topics_parent_fkey FOREIGN KEY (parent_id) REFERENCES topics (id) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE article_topics (
    article_id        bigint      NOT NULL,
    topic_id          text        NOT NULL,
    score             double precision NOT NULL,
    evidence          jsonb       NOT NULL,
    taxonomy_version  text        NOT NULL,
    tagged_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT article_topics_pkey PRIMARY KEY (article_id, topic_id),
    CONSTRAINT article_topics_article_fkey FOREIGN KEY (article_id) REFERENCES articles (id) ON DELETE CASCADE,
    CONSTRAINT article_topics_topic_fkey FOREIGN KEY (topic_id) REFERENCES topics (id) ON DELETE CASCADE
);
CREATE INDEX article_topics_topic_idx ON article_topics (topic_id);

CREATE VIEW articles_with_topics AS
SELECT
    a.id, a.canonical_url, a.url, a.title, a.author, a.published_at, a.language, a.source, a.body,
    a.word_count, a.content_hash, a.first_seen_at, a.updated_at,
    ARRAY(
        SELECT t.label FROM article_topics AS at JOIN topics AS t ON t.id = at.topic_id
        WHERE at.article_id = a.id ORDER BY t.label
    ) AS topics
FROM articles AS a;

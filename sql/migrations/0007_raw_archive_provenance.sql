-- The raw archive (every fetched feed document and page, compressed and stored once per distinct content),
-- replay runs and provenance: which run, interval and mode last wrote a row, and with which versions.

-- Distinct fetched bytes, addressed by the SHA-256 of their decoded content: a page fetched under two feed
-- items, or a feed document that did not change between polls, is stored once. `body` is compressed
-- (encoding zlib, or gzip as the server sent it); it skips server-side compression, as pages.body did.
CREATE TABLE archive_blobs (
    sha256       bytea       NOT NULL,
    encoding     text        NOT NULL,
    size         integer     NOT NULL,
    stored_size  integer     NOT NULL,
    body         bytea       NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT archive_blobs_pkey PRIMARY KEY (sha256),
    CONSTRAINT archive_blobs_sha256_check CHECK (octet_length(sha256) = 32),
    CONSTRAINT archive_blobs_encoding_check CHECK (encoding IN ('zlib', 'gzip', 'identity'))
);
ALTER TABLE archive_blobs ALTER COLUMN body SET STORAGE EXTERNAL;

-- A page's fetch facts stay in pages (one row per feed item); its bytes move to archive_blobs. Rows stored
-- before this migration keep their bytes inline (body, body_encoding) and sha256 NULL; rows pruned by the
-- retention setting keep their fetch facts with neither.
ALTER TABLE pages ADD COLUMN sha256 bytea;
ALTER TABLE pages ADD COLUMN headers jsonb NOT NULL DEFAULT '{}';
ALTER TABLE pages ADD COLUMN run_id bigint;
ALTER TABLE pages ALTER COLUMN body DROP NOT NULL;
ALTER TABLE pages ALTER COLUMN body_encoding DROP NOT NULL;
ALTER TABLE pages ADD CONSTRAINT pages_blob_fkey FOREIGN KEY (sha256) REFERENCES archive_blobs (sha256);
ALTER TABLE pages ADD CONSTRAINT pages_run_fkey FOREIGN KEY (run_id) REFERENCES ingest_runs (id) ON DELETE SET NULL;
ALTER TABLE pages ADD CONSTRAINT pages_one_body_check CHECK (sha256 IS NULL OR body IS NULL);
CREATE INDEX pages_sha256_idx ON pages (sha256);
CREATE INDEX pages_fetched_at_idx ON pages (fetched_at);

-- Each poll's document, when the server sent one (not for 304 or a failure), with its fetch facts.
ALTER TABLE feed_fetches ADD COLUMN url text;
ALTER TABLE feed_fetches ADD COLUMN final_url text;
ALTER TABLE feed_fetches ADD COLUMN headers jsonb NOT NULL DEFAULT '{}';
ALTER TABLE feed_fetches ADD COLUMN sha256 bytea;
ALTER TABLE feed_fetches ADD CONSTRAINT feed_fetches_blob_fkey FOREIGN KEY (sha256) REFERENCES archive_blobs (sha256);
CREATE INDEX feed_fetches_sha256_idx ON feed_fetches (sha256);
CREATE INDEX feed_fetches_fetched_at_idx ON feed_fetches (fetched_at);

-- The child sitemaps a sitemap source's poll read (its top document is the poll's feed_fetches row), with
-- their fetch facts and archived bytes.
CREATE TABLE sitemap_documents (
    run_id       bigint      NOT NULL,
    feed_id      bigint      NOT NULL,
    url          text        NOT NULL,
    final_url    text,
    http_status  integer,
    headers      jsonb       NOT NULL DEFAULT '{}',
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    sha256       bytea,
    urls         integer     NOT NULL DEFAULT 0,
    error        text,
    CONSTRAINT sitemap_documents_pkey PRIMARY KEY (run_id, feed_id, url),
    CONSTRAINT sitemap_documents_run_fkey FOREIGN KEY (run_id) REFERENCES ingest_runs (id) ON DELETE CASCADE,
    CONSTRAINT sitemap_documents_feed_fkey FOREIGN KEY (feed_id) REFERENCES feeds (id) ON DELETE CASCADE,
    CONSTRAINT sitemap_documents_blob_fkey FOREIGN KEY (sha256) REFERENCES archive_blobs (sha256)
);
CREATE INDEX sitemap_documents_sha256_idx ON sitemap_documents (sha256);
CREATE INDEX sitemap_documents_fetched_at_idx ON sitemap_documents (fetched_at);

-- A source may be read from a news sitemap (or sitemap index) instead of an RSS/Atom feed; both are "feeds"
-- with the same health, backoff and entry queue.
ALTER TABLE feeds ADD COLUMN kind text NOT NULL DEFAULT 'feed';
ALTER TABLE feeds ADD CONSTRAINT feeds_kind_check CHECK (kind IN ('feed', 'sitemap'));

-- What a run was: live (poll and fetch), replay (re-process archived pages, no network) or both; who started
-- it (Airflow's run type, or cli / cli-backfill); the code and rule versions it ran with; and what replaying did.
ALTER TABLE ingest_runs ADD COLUMN mode text NOT NULL DEFAULT 'live';
ALTER TABLE ingest_runs ADD COLUMN run_type text;
ALTER TABLE ingest_runs ADD COLUMN extractor_version text;
ALTER TABLE ingest_runs ADD COLUMN taxonomy_version text;
ALTER TABLE ingest_runs ADD COLUMN replayed integer NOT NULL DEFAULT 0;
ALTER TABLE ingest_runs ADD COLUMN unchanged integer NOT NULL DEFAULT 0;
ALTER TABLE ingest_runs ADD COLUMN retagged integer NOT NULL DEFAULT 0;
ALTER TABLE ingest_runs ADD CONSTRAINT ingest_runs_mode_check CHECK (mode IN ('live', 'replay', 'both'));
CREATE INDEX ingest_runs_interval_idx ON ingest_runs (interval_start, interval_end);

-- The run that last changed an article's topic row (its taxonomy and rule versions are already there).
ALTER TABLE article_topics ADD COLUMN last_run_id bigint;
ALTER TABLE article_topics ADD CONSTRAINT article_topics_last_run_fkey
    FOREIGN KEY (last_run_id) REFERENCES ingest_runs (id) ON DELETE SET NULL;

-- replay finds the archived pages of an interval's items by publication date
CREATE INDEX feed_entries_published_at_idx ON feed_entries (published_at);
-- a run's totals are counted from the rows it wrote (pipeline.store.rows_of_run)
CREATE INDEX feed_entries_first_run_idx ON feed_entries (first_run_id);
CREATE INDEX articles_last_run_idx ON articles (last_run_id);
CREATE INDEX pages_run_idx ON pages (run_id);

-- Where each article row came from: the run that last changed it, that run's interval, mode and run type,
-- the extractor version that wrote its body, and the taxonomy versions of its topic rows.
CREATE VIEW article_provenance AS
SELECT
    a.id AS article_id, a.canonical_url, a.revision, a.extractor_version,
    a.first_run_id, a.last_run_id, r.run_key AS last_run_key, r.run_type AS last_run_type, r.mode AS last_run_mode,
    r.interval_start AS last_interval_start, r.interval_end AS last_interval_end, a.updated_at,
    ARRAY(SELECT DISTINCT at.taxonomy_version FROM article_topics AS at WHERE at.article_id = a.id
          ORDER BY at.taxonomy_version) AS taxonomy_versions,
    (SELECT max(at.tagged_at) FROM article_topics AS at WHERE at.article_id = a.id) AS last_tagged_at
FROM articles AS a
LEFT JOIN ingest_runs AS r ON r.id = a.last_run_id;

-- How much the archive holds, by kind: distinct documents and their compressed and decoded sizes.
CREATE VIEW archive_usage AS
SELECT kind, count(*)::bigint AS documents, coalesce(sum(b.stored_size), 0)::bigint AS stored_bytes,
       coalesce(sum(b.size), 0)::bigint AS decoded_bytes, min(b.stored_at) AS oldest, max(b.stored_at) AS newest
FROM (
    SELECT DISTINCT 'page' AS kind, sha256 FROM pages WHERE sha256 IS NOT NULL
    UNION
    SELECT DISTINCT 'feed', sha256 FROM feed_fetches WHERE sha256 IS NOT NULL
    UNION
    SELECT DISTINCT 'sitemap', sha256 FROM sitemap_documents WHERE sha256 IS NOT NULL
) AS used
JOIN archive_blobs AS b ON b.sha256 = used.sha256
GROUP BY kind;

SELECT news_grant_reader();

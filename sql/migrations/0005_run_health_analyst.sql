-- Run health, data-quality results, the analyst layer (views, full-text search) and the read-only role
-- news_reader. Applies after 0001-0004 on a database with data: the search column is computed for the stored
-- articles here (one table rewrite), the aggregates are filled once.

-- Why a feed was disabled (`python -m pipeline feeds disable URL --reason TEXT`); cleared when enabled.
ALTER TABLE feeds ADD COLUMN disabled_reason text;
ALTER TABLE feeds ADD COLUMN disabled_at timestamptz;

-- The outcome of the quality gates that ran after the load (NULL: not checked, e.g. a CLI run).
ALTER TABLE ingest_runs ADD COLUMN quality_status text;
ALTER TABLE ingest_runs ADD COLUMN quality_seconds double precision NOT NULL DEFAULT 0;
ALTER TABLE ingest_runs ADD COLUMN quality_checked_at timestamptz;
ALTER TABLE ingest_runs ADD CONSTRAINT ingest_runs_quality_status_check
    CHECK (quality_status IN ('passed', 'warned', 'failed'));

-- One row per run and quality check (a re-run check overwrites its row).
CREATE TABLE quality_checks (
    run_id          bigint      NOT NULL,
    check_name      text        NOT NULL,
    outcome         text        NOT NULL,
    value           double precision,
    hits            integer     NOT NULL,
    total           integer     NOT NULL,
    warn_threshold  double precision NOT NULL,
    fail_threshold  double precision NOT NULL,
    message         text        NOT NULL,
    checked_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quality_checks_pkey PRIMARY KEY (run_id, check_name),
    CONSTRAINT quality_checks_run_fkey FOREIGN KEY (run_id) REFERENCES ingest_runs (id) ON DELETE CASCADE,
    CONSTRAINT quality_checks_outcome_check CHECK (outcome IN ('passed', 'warned', 'failed'))
);

-- the quality checks find a run's items and articles through the entries it touched
CREATE INDEX feed_entries_last_run_idx ON feed_entries (last_run_id);

-- Full-text search over title (weight A) and body (weight B), kept by PostgreSQL on every insert and update
-- of either column. English stemming: 'sanction' finds 'sanctions'.
ALTER TABLE articles ADD COLUMN search tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A')
    || setweight(to_tsvector('english'::regconfig, body), 'B')
) STORED;
CREATE INDEX articles_search_idx ON articles USING gin (search);

-- Every column of articles (the first ones as 0001 had them) plus the topics' labels and ids.
CREATE OR REPLACE VIEW articles_with_topics AS
SELECT
    a.id, a.canonical_url, a.url, a.title, a.author, a.published_at, a.language, a.source, a.body,
    a.word_count, a.content_hash, a.first_seen_at, a.updated_at,
    ARRAY(
        SELECT t.label FROM article_topics AS at JOIN topics AS t ON t.id = at.topic_id
        WHERE at.article_id = a.id ORDER BY t.label
    ) AS topics,
    a.source_id, a.extractor_version, a.first_run_id, a.last_run_id, a.cluster_id, a.revision,
    ARRAY(
        SELECT at.topic_id FROM article_topics AS at WHERE at.article_id = a.id ORDER BY at.topic_id
    ) AS topic_ids,
    a.search
FROM articles AS a;

-- Articles per topic and UTC publication day, with distinct stories and outlets. Materialised: refreshed by
-- the news_aggregates DAG after each ingestion run and by `python -m pipeline report`.
CREATE MATERIALIZED VIEW topic_daily_counts AS
SELECT
    (a.published_at AT TIME ZONE 'UTC')::date AS day, t.id AS topic_id, t.label AS topic,
    count(*)::integer AS articles, count(DISTINCT a.cluster_id)::integer AS stories,
    count(DISTINCT a.source)::integer AS outlets
FROM article_topics AS at
JOIN articles AS a ON a.id = at.article_id
JOIN topics AS t ON t.id = at.topic_id
WHERE a.published_at IS NOT NULL
GROUP BY 1, 2, 3;
-- unique, so the refresh can run CONCURRENTLY (readers are not blocked)
CREATE UNIQUE INDEX topic_daily_counts_day_topic_key ON topic_daily_counts (day, topic_id);

-- One row per feed: its state, how its recent polls went and how much it publishes.
CREATE VIEW feed_health AS
SELECT
    f.id AS feed_id, f.url, s.name AS source, f.title, f.enabled, f.disabled_reason, f.disabled_at,
    CASE
        WHEN NOT f.enabled THEN 'disabled'
        WHEN f.last_polled_at IS NULL THEN 'never polled'
        WHEN streak.failures > 0 THEN 'failing'
        WHEN f.last_status = 'malformed' THEN 'malformed'
        ELSE 'ok'
    END AS health,
    f.last_status, f.last_http_status, f.last_error, f.last_polled_at, f.last_success_at,
    streak.failures::integer AS failure_streak, polls.polls::integer AS polls,
    polls.failed_polls::integer AS failed_polls, polls.median_latency_ms,
    items.items_per_day, items.last_item_at
FROM feeds AS f
JOIN sources AS s ON s.id = f.source_id
CROSS JOIN LATERAL (
    SELECT count(*) AS failures FROM feed_fetches AS ff
    WHERE ff.feed_id = f.id AND ff.status = 'failed'
      AND ff.fetched_at > coalesce((SELECT max(ok.fetched_at) FROM feed_fetches AS ok
                                    WHERE ok.feed_id = f.id AND ok.status <> 'failed'), '-infinity')
) AS streak
CROSS JOIN LATERAL (
    SELECT
        (SELECT count(*) FROM feed_fetches AS ff WHERE ff.feed_id = f.id) AS polls,
        (SELECT count(*) FROM feed_fetches AS ff WHERE ff.feed_id = f.id AND ff.status = 'failed') AS failed_polls,
        (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY recent.duration_ms)
         FROM (SELECT ff.duration_ms FROM feed_fetches AS ff WHERE ff.feed_id = f.id
               ORDER BY ff.fetched_at DESC LIMIT 20) AS recent) AS median_latency_ms
) AS polls
CROSS JOIN LATERAL (
    -- items over the 28 days up to the newest item, per day those items span (at least one)
    SELECT
        round(count(*) / greatest(1.0, extract(epoch FROM max(e.published_at) - min(e.published_at)) / 86400), 2)
            AS items_per_day,
        max(e.published_at) AS last_item_at
    FROM feed_entries AS e
    WHERE e.feed_id = f.id AND e.published_at IS NOT NULL
      AND e.published_at > (SELECT max(n.published_at) FROM feed_entries AS n WHERE n.feed_id = f.id)
                           - interval '28 days'
) AS items;

-- One row per ingestion run: counts and timings per stage, and what the quality gates said.
CREATE VIEW run_health AS
SELECT
    r.id AS run_id, r.run_key, r.trigger, r.interval_start, r.interval_end, r.status, r.quality_status,
    r.started_at, r.finished_at, extract(epoch FROM r.finished_at - r.started_at)::double precision AS wall_seconds,
    r.feeds_polled, r.feeds_failed, r.entries_seen, r.entries_new, r.pages_fetched, r.pages_failed,
    r.extraction_failures, r.duplicates, r.loaded, r.tagged,
    r.fetch_seconds, r.extract_seconds, r.tag_seconds, r.load_seconds, r.quality_seconds, r.error,
    ARRAY(
        SELECT q.message FROM quality_checks AS q
        WHERE q.run_id = r.id AND q.outcome <> 'passed' ORDER BY q.check_name
    ) AS quality_messages
FROM ingest_runs AS r;

-- The read-only role of analysts: SELECT on the views above, nothing else. Roles belong to the server, so
-- another database on it may have created the role already. A migrator without CREATEROLE skips it: a
-- superuser creates the role later and calls news_grant_reader().
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'news_reader') THEN
        CREATE ROLE news_reader LOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- created at the same moment by the migration of another database
    WHEN insufficient_privilege THEN
        RAISE NOTICE USING MESSAGE = 'cannot create role news_reader (' || SQLERRM
            || '); create it, then run SELECT news_grant_reader()';
END
$$;

CREATE FUNCTION news_grant_reader() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'news_reader') THEN
        RAISE NOTICE 'role news_reader does not exist: nothing granted';
        RETURN false;
    END IF;
    BEGIN
        EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' TO news_reader';
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE NOTICE USING MESSAGE = 'cannot grant USAGE on schema ' || current_schema() || ' (' || SQLERRM
            || '): the usage PUBLIC has applies';
    END;
    GRANT SELECT ON articles_with_topics, stories, topic_daily_counts, feed_health, run_health TO news_reader;
    RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION news_grant_reader() FROM PUBLIC;
SELECT news_grant_reader();

-- Feed health: the streak of failed polls and when a feed is polled next (backoff after failures, an interval
-- adapted to its publishing rate after successes), also shown in feed_health (columns appended at the end).

ALTER TABLE feeds ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0;
ALTER TABLE feeds ADD COLUMN next_poll_at timestamptz;
ALTER TABLE feeds ADD COLUMN poll_interval_seconds integer;
ALTER TABLE feeds ADD CONSTRAINT feeds_consecutive_failures_check CHECK (consecutive_failures >= 0);
ALTER TABLE feeds ADD CONSTRAINT feeds_poll_interval_seconds_check CHECK (poll_interval_seconds >= 0);

-- One row per feed: as in 0005, plus the stored failure streak, the next poll and the adapted interval.
CREATE OR REPLACE VIEW feed_health AS
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
    items.items_per_day, items.last_item_at,
    f.consecutive_failures, f.next_poll_at, f.poll_interval_seconds
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

-- a replaced view keeps its grants; granting again covers a role created since
SELECT news_grant_reader();

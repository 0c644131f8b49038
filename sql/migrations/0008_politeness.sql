-- Politeness: the hash of a feed's last body beside its validators, robots.txt shared by every fetching
-- process, and each host's next free request start (the limiter that spans mapped tasks).

-- sha256 (hex) of the body of the feed's last parsed 200: the same bytes again are not parsed again
ALTER TABLE feeds ADD COLUMN body_sha256 text;
ALTER TABLE feeds ADD CONSTRAINT feeds_body_sha256_check CHECK (body_sha256 ~ '^[0-9a-f]{64}$');

-- One robots.txt per origin, as last fetched (status NULL: no HTTP answer came). outcome, after RFC 9309:
-- 'rules' (a 2xx; body holds them), 'allow_all' (a 4xx, or no usable file) or 'unavailable' (a 5xx, a 429 or
-- no answer: nothing is fetched from the origin until it is fetched again, soon)
CREATE TABLE robots_txt (
    scheme text NOT NULL,
    host text NOT NULL,
    port integer NOT NULL,
    outcome text NOT NULL,
    status integer,
    body text,
    error text,
    fetched_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    CONSTRAINT robots_txt_pkey PRIMARY KEY (scheme, host, port),
    CONSTRAINT robots_txt_port_check CHECK (port BETWEEN 1 AND 65535),
    CONSTRAINT robots_txt_outcome_check CHECK (outcome IN ('rules', 'allow_all', 'unavailable'))
);

-- One row per host: the earliest moment the next request to it may start (reserved by atomic upserts)
CREATE TABLE host_slots (
    host text NOT NULL,
    next_at timestamptz NOT NULL,
    CONSTRAINT host_slots_pkey PRIMARY KEY (host)
);

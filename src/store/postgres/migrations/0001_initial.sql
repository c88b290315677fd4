-- tokend's PostgreSQL schema, version 1: what the sled store keeps in its five trees.
-- Record columns hold the same prost-encoded bytes as sled (secrets sealed by tokend before they
-- reach the database). Names sort bytewise (COLLATE "C"), as sled's keys do.

CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE profiles (
    name   TEXT COLLATE "C" PRIMARY KEY,
    record BYTEA NOT NULL
);

-- One row per profile, written only by compare-and-swap on `version`. `next_refresh_at_ms` is the
-- refresh schedule (0: not scheduled); the lease columns say which replica may call the provider
-- for this connection, until when (milliseconds by the database's clock).
CREATE TABLE connections (
    name               TEXT COLLATE "C" PRIMARY KEY REFERENCES profiles (name) ON DELETE CASCADE,
    version            BIGINT NOT NULL,
    next_refresh_at_ms BIGINT NOT NULL DEFAULT 0,
    record             BYTEA NOT NULL,
    lease_holder       TEXT NOT NULL DEFAULT '',
    lease_until_ms     BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX connections_due ON connections (next_refresh_at_ms, name) WHERE next_refresh_at_ms > 0;

CREATE TABLE consents (
    key    BYTEA PRIMARY KEY,
    record BYTEA NOT NULL
);

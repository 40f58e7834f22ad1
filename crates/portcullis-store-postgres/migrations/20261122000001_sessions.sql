-- Sessions: the whole record as JSON text in `body`, beside the columns indexes and the hot
-- path need. Only SHA-256 token hashes are stored. `last_seen_at`/`idle_at` are kept as columns
-- so a touch is one narrow UPDATE; they win over the copies inside `body`.
CREATE TABLE pc_sessions (
    id            TEXT PRIMARY KEY,
    token_hash    BYTEA NOT NULL UNIQUE,
    subject       TEXT NOT NULL,
    policy        TEXT NOT NULL,
    parent        TEXT,
    live          BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    idle_at       BIGINT,
    next_deadline BIGINT NOT NULL,
    tomb_until    BIGINT,
    purge_at      BIGINT,
    body          TEXT NOT NULL
);

CREATE INDEX pc_sessions_subject ON pc_sessions (subject, created_at) WHERE live;
CREATE INDEX pc_sessions_parent ON pc_sessions (parent) WHERE live AND parent IS NOT NULL;
-- The sweep reads by deadline: O(expired), not O(sessions).
CREATE INDEX pc_sessions_due ON pc_sessions (next_deadline) WHERE live;
CREATE INDEX pc_sessions_purge ON pc_sessions (purge_at) WHERE NOT live;
CREATE INDEX pc_sessions_tombs ON pc_sessions (subject, policy) WHERE tomb_until IS NOT NULL;

CREATE TABLE pc_events (
    seq        BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    subject    TEXT,
    session_id TEXT,
    body       TEXT NOT NULL
);

CREATE INDEX pc_events_subject ON pc_events (subject, seq);
CREATE INDEX pc_events_session ON pc_events (session_id, seq);

CREATE TABLE pc_api_keys (
    id       TEXT PRIMARY KEY,
    key_hash BYTEA NOT NULL UNIQUE,
    body     TEXT NOT NULL
);

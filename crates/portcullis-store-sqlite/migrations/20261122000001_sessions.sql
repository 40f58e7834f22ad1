-- Sessions: one row per session, the whole record as JSON in `body`; the columns beside it are
-- what indexes need. Only SHA-256 token hashes are stored.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    subject       TEXT NOT NULL,
    live          INTEGER NOT NULL,
    next_deadline INTEGER NOT NULL,
    purge_at      INTEGER,
    body          TEXT NOT NULL
) STRICT;

CREATE INDEX sessions_by_subject ON sessions (subject) WHERE live = 1;
-- The sweep reads expired sessions by deadline: O(expired), not O(sessions).
CREATE INDEX sessions_by_deadline ON sessions (next_deadline) WHERE live = 1;
CREATE INDEX sessions_by_purge ON sessions (purge_at) WHERE live = 0;

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY NOT NULL,
    at         INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    subject    TEXT,
    session_id TEXT,
    body       TEXT NOT NULL
) STRICT;

CREATE INDEX events_by_subject ON events (subject, seq);
CREATE INDEX events_by_session ON events (session_id, seq);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    body       TEXT NOT NULL
) STRICT;

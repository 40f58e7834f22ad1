-- One-time identifiers (a client assertion's jti), by SHA-256, kept until `until` (ms).
CREATE TABLE pc_replays (
    hash  BYTEA PRIMARY KEY,
    until BIGINT NOT NULL
);

CREATE INDEX pc_replays_until ON pc_replays (until);

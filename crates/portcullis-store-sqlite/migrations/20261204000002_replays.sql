-- One-time identifiers (a client assertion's jti), by SHA-256 (hex), kept until `until` (ms).
CREATE TABLE oidc_replays (
    hash  TEXT PRIMARY KEY NOT NULL,
    until INTEGER NOT NULL
) STRICT;

CREATE INDEX oidc_replays_by_until ON oidc_replays (until);

-- Failure counts of sign-in (portcullis_core::throttle), shared by every node of the file: one
-- row per throttle key, its fields those of `Strikes` (times in milliseconds since the epoch).
-- `expires_at` is `Strikes::expires_at` when the row was counted; `forget_expired` deletes by it.
CREATE TABLE throttle (
    key           TEXT PRIMARY KEY NOT NULL,
    failures      INTEGER NOT NULL,
    last_failure  INTEGER NOT NULL,
    blocked_until INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
) STRICT;

CREATE INDEX throttle_expires_at ON throttle (expires_at);

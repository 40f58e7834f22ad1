-- Failure counts of sign-in (portcullis_core::throttle), shared by every node: one row per
-- throttle key, its fields those of `Strikes` (times in milliseconds since the epoch).
-- `expires_at` is `Strikes::expires_at` when the row was counted; `forget_expired` deletes by it.
CREATE TABLE pc_throttle (
    key           TEXT PRIMARY KEY,
    failures      BIGINT NOT NULL,
    last_failure  BIGINT NOT NULL,
    blocked_until BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE INDEX pc_throttle_expires_at ON pc_throttle (expires_at);

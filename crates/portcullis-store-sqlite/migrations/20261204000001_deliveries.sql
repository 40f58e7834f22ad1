-- Back-channel logout deliveries (the outbox): one row per ended application session whose
-- client asked to be told, written in the transaction that ends the session. `state` is
-- `pending`, `delivered` or `failed`; `next_attempt_at` is when a pending one is due (or its
-- claim's lease ends), and when a finished one finished; `uri` is the client's back-channel
-- logout URI when the session was created.
CREATE TABLE oidc_deliveries (
    session         TEXT PRIMARY KEY NOT NULL,
    sso_session     TEXT,
    subject         TEXT NOT NULL,
    client          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    ended_at        INTEGER NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    uri             TEXT NOT NULL
) STRICT;

CREATE INDEX oidc_deliveries_due ON oidc_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX oidc_deliveries_by_ending ON oidc_deliveries (ended_at);

-- Back-channel logout deliveries (the outbox): one row per ended application session whose
-- client asked to be told, written in the transaction that ends the session. `state` is
-- `pending`, `delivered` or `failed`; `next_attempt_at` is when a pending one is due (or its
-- claim's lease ends), and when a finished one finished; `uri` is the client's back-channel
-- logout URI when the session was created.
CREATE TABLE pc_deliveries (
    session         TEXT PRIMARY KEY,
    sso_session     TEXT,
    subject         TEXT NOT NULL,
    client          TEXT NOT NULL,
    reason          TEXT NOT NULL,
    ended_at        BIGINT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    uri             TEXT NOT NULL
);

CREATE INDEX pc_deliveries_due ON pc_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX pc_deliveries_by_ending ON pc_deliveries (ended_at);

-- The OpenID Connect provider's entities (portcullis_core::oidc), shared by every process that
-- opens the file. Times are milliseconds since the epoch; token hashes are SHA-256 in hex.

-- An application's registration as a client: the JSON of `StoredClient`; NULL when the
-- application is not a client (every application written before this migration).
ALTER TABLE applications ADD COLUMN client TEXT;

-- Authorization codes: the whole code as JSON (`StoredCode`) in `body`, beside the columns a
-- redemption and the sweep need. A redemption sets `redeemed_for` (and the body's field) with
-- one `UPDATE … WHERE redeemed_for IS NULL`, so of racing redemptions exactly one changes the
-- row.
CREATE TABLE oidc_codes (
    hash         TEXT PRIMARY KEY NOT NULL,
    expires_at   INTEGER NOT NULL,
    redeemed_for TEXT,
    body         TEXT NOT NULL
) STRICT;

CREATE INDEX oidc_codes_by_expiry ON oidc_codes (expires_at);

-- Signing keys: the whole key as JSON (`StoredSigningKey`) in `body`, beside the columns the
-- rotation reads. Listed oldest first by `created_at`, then by rowid (the order they were
-- added in).
CREATE TABLE oidc_signing_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    alg        TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    body       TEXT NOT NULL
) STRICT;

-- One signing key per algorithm: a second unretired key of an algorithm cannot be written,
-- whichever path tried.
CREATE UNIQUE INDEX oidc_signing_keys_current ON oidc_signing_keys (alg) WHERE retired_at IS NULL;

-- Refresh tokens, one row each, every field a column (`scopes` a JSON array of names). A
-- rotated token keeps its row with `rotated_at`, `successor` and `sealed_successor` set; those
-- three are NULL together until then.
CREATE TABLE oidc_refresh_tokens (
    hash             TEXT PRIMARY KEY NOT NULL,
    family           TEXT NOT NULL,
    client           TEXT NOT NULL,
    subject          TEXT NOT NULL,
    scopes           TEXT NOT NULL,
    issued_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    rotated_at       INTEGER,
    successor        TEXT,
    sealed_successor TEXT
) STRICT;

CREATE INDEX oidc_refresh_tokens_by_family ON oidc_refresh_tokens (family);
CREATE INDEX oidc_refresh_tokens_by_expiry ON oidc_refresh_tokens (expires_at);

-- Consents: one row per (person, client), `scopes` the JSON array of every scope granted so
-- far, `granted_at` the latest grant's. A grant merges into the row in one upsert.
CREATE TABLE oidc_consents (
    subject    TEXT NOT NULL,
    client     TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    granted_at INTEGER NOT NULL,
    PRIMARY KEY (subject, client)
) STRICT;

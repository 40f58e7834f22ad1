-- The OpenID Connect provider's entities (portcullis_core::oidc), shared by every node.

-- An application's registration as a client: the JSON of `StoredClient`, NULL when the
-- application is not a client (every application of the previous release).
ALTER TABLE pc_applications ADD COLUMN client TEXT;

-- Authorization codes: `body` is the code as issued (`StoredCode`). `redeemed_for` is a column
-- so that a redemption is one conditional UPDATE; it wins over the copy inside `body`.
CREATE TABLE pc_codes (
    hash         BYTEA PRIMARY KEY,
    expires_at   BIGINT NOT NULL,
    redeemed_for TEXT,
    body         TEXT NOT NULL
);

CREATE INDEX pc_codes_expires_at ON pc_codes (expires_at);

-- Signing keys: `body` is the key as added (`StoredSigningKey`); `retired_at` is a column, and
-- wins over the copy inside `body`, so that retiring is one conditional UPDATE. `seq` keeps
-- the order keys were added in among keys made at the same millisecond.
CREATE TABLE pc_signing_keys (
    kid        TEXT PRIMARY KEY,
    alg        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    seq        BIGINT GENERATED ALWAYS AS IDENTITY,
    body       TEXT NOT NULL
);

-- One signing key per algorithm, whichever node adds it: a second first key, or a rotation
-- racing another, conflicts here instead of leaving two keys that sign.
CREATE UNIQUE INDEX pc_signing_keys_signing ON pc_signing_keys (alg) WHERE retired_at IS NULL;

-- Refresh tokens, every field a column (times in milliseconds since the epoch). The three
-- `rotated_*`/`successor*` columns are set together, once, by the rotation that wins.
CREATE TABLE pc_refresh_tokens (
    hash             BYTEA PRIMARY KEY,
    family           TEXT NOT NULL,
    client           TEXT NOT NULL,
    subject          TEXT NOT NULL,
    scopes           TEXT[] NOT NULL,
    issued_at        BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    rotated_at       BIGINT,
    successor        BYTEA,
    sealed_successor TEXT,
    CHECK ((rotated_at IS NULL) = (successor IS NULL)
       AND (successor IS NULL) = (sealed_successor IS NULL))
);

CREATE INDEX pc_refresh_tokens_family ON pc_refresh_tokens (family);
CREATE INDEX pc_refresh_tokens_expires_at ON pc_refresh_tokens (expires_at);

-- Consents: one row per person and client, every scope granted so far.
CREATE TABLE pc_consents (
    subject    TEXT NOT NULL,
    client     TEXT NOT NULL,
    scopes     TEXT[] NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (subject, client)
);

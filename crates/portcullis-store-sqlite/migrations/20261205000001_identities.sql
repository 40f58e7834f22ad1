-- Federated identities (portcullis_core::oidc::FederatedIdentity): an account's links to people
-- at upstream identity providers, one row per upstream person, so the primary key refuses a
-- second account for the same (issuer, subject) whichever process links it. `linked_at` is
-- milliseconds since the epoch.
CREATE TABLE oidc_identities (
    issuer    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    provider  TEXT NOT NULL,
    linked_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject)
) STRICT;

-- An account's links, listed on its page and counted by an unlink that keeps one.
CREATE INDEX oidc_identities_by_user ON oidc_identities (user_id);

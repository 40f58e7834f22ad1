-- Upstream sessions (portcullis_core::oidc::UpstreamSession): which person an upstream session
-- (`sid`) is, so a back-channel logout token naming only the session finds them. Kept until
-- `until` (milliseconds since the epoch): no SSO session it vouched for lives longer.
CREATE TABLE oidc_upstream_sessions (
    issuer  TEXT NOT NULL,
    sid     TEXT NOT NULL,
    subject TEXT NOT NULL,
    until   INTEGER NOT NULL,
    PRIMARY KEY (issuer, sid)
) STRICT;

-- The ones that ran out, forgotten a few at a time by each new one.
CREATE INDEX oidc_upstream_sessions_by_until ON oidc_upstream_sessions (until);

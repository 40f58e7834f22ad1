-- Upstream sessions (portcullis_core::oidc::UpstreamSession): which person an upstream session
-- (`sid`) is, so a back-channel logout token naming only the session finds them. Kept until
-- `until_ms` (milliseconds since the epoch): no SSO session it vouched for lives longer.
CREATE TABLE pc_upstream_sessions (
    issuer   TEXT NOT NULL,
    sid      TEXT NOT NULL,
    subject  TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (issuer, sid)
);

-- The ones that ran out, forgotten a few at a time by each new one.
CREATE INDEX pc_upstream_sessions_until ON pc_upstream_sessions (until_ms);

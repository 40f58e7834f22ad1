-- Applications: the principals that call Portcullis. Each column is one field, written and read
-- by the store's own row type (not the serde form of the domain type): `policies` and `grants`
-- are JSON arrays of names.
CREATE TABLE applications (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL UNIQUE,
    policies       TEXT NOT NULL,
    default_policy TEXT NOT NULL,
    grants         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    version        INTEGER NOT NULL
) STRICT;

-- The application an event concerns (NULL for none). Events written before applications
-- existed belong to the previous release's application, as their bodies read back.
ALTER TABLE events ADD COLUMN application TEXT DEFAULT 'app_legacy';

-- A query for one application's events reads its own entries in position order, so LIMIT
-- applies after the filter without a scan of the others.
CREATE INDEX events_by_application ON events (application, seq);

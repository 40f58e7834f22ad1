-- Applications: the principals that call Portcullis. Each column is one field, written and read
-- by the store's own row type (not the serde form of the domain type).
CREATE TABLE pc_applications (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    policies       TEXT[] NOT NULL,
    default_policy TEXT NOT NULL,
    grants         TEXT[] NOT NULL,
    created_at     BIGINT NOT NULL,
    version        BIGINT NOT NULL
);

-- The application a session belongs to, beside its body so an application's live sessions are
-- found by index. Rows of the previous release belong to its application, as their bodies read
-- back; the default (stored once, no table rewrite) also covers a node of that release still
-- inserting during a rolling upgrade. This release always writes the column.
ALTER TABLE pc_sessions ADD COLUMN application TEXT NOT NULL DEFAULT 'app_legacy';
CREATE INDEX pc_sessions_application ON pc_sessions (application) WHERE live;

-- The application an event concerns (NULL for none); the previous release's events are its
-- application's, like their bodies.
ALTER TABLE pc_events ADD COLUMN application TEXT DEFAULT 'app_legacy';
-- A query for one application's events reads its own entries in position order, so LIMIT
-- applies after the filter without a scan of the others.
CREATE INDEX pc_events_application ON pc_events (application, seq);

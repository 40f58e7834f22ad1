-- Every read of a session is answered from memory (the cache loads the table whole on open), so
-- the table needs its primary key and nothing else: the unique token-hash index and the subject,
-- deadline and purge indexes only cost each write pages at random places of the file. The table
-- is rebuilt to drop the unique constraint with them.
CREATE TABLE sessions_next (
    id            TEXT PRIMARY KEY NOT NULL,
    token_hash    TEXT NOT NULL,
    subject       TEXT NOT NULL,
    live          INTEGER NOT NULL,
    next_deadline INTEGER NOT NULL,
    purge_at      INTEGER,
    body          TEXT NOT NULL
) STRICT;

INSERT INTO sessions_next (id, token_hash, subject, live, next_deadline, purge_at, body)
    SELECT id, token_hash, subject, live, next_deadline, purge_at, body FROM sessions;

DROP TABLE sessions;

ALTER TABLE sessions_next RENAME TO sessions;

-- Event positions without a lock (issue 18). An event's `seq` is now its transaction's id
-- shifted left by 20 bits, plus its place among that transaction's events, given as it is
-- written. Before, one advisory lock taken at the append and held to the commit put every
-- writing transaction behind the one before it, whatever its subject. A reader now shows only
-- the events of transactions older than every transaction still running (`pg_snapshot_xmin`):
-- those can no longer change, and any event yet to appear belongs to a younger transaction, so
-- at a higher position, and paging by `after` never skips one.
DO $$
BEGIN
    IF (SELECT coalesce(max(seq), 0) FROM pc_events) >= (pg_current_xact_id()::text::bigint << 20) THEN
        RAISE EXCEPTION 'pc_events holds positions at or past %, where new events would start: '
            'this database cannot take the new event positions', pg_current_xact_id()::text::bigint << 20;
    END IF;
END $$;

ALTER TABLE pc_events ALTER COLUMN seq DROP DEFAULT;
DROP SEQUENCE IF EXISTS pc_events_seq_seq;

-- A node of the release before draws positions from the column's sequence, below those
-- readers have passed. Its sequence is now one that is spent, so such a node's changes fail
-- with an error (closed: nothing is written) until it is upgraded.
CREATE SEQUENCE pc_events_seq_seq MINVALUE 0 MAXVALUE 1 START 1 OWNED BY pc_events.seq;
SELECT nextval('pc_events_seq_seq');

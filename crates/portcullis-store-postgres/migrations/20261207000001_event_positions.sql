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

-- A node of the release before would draw positions from the sequence, below those readers
-- have passed: without the sequence its appends fail instead (closed) until it is upgraded.
ALTER TABLE pc_events ALTER COLUMN seq DROP DEFAULT;
DROP SEQUENCE IF EXISTS pc_events_seq_seq;

-- Issue 24: a query's rewritten SQL (~10 kB) and normalised text are
-- written once, at submission, and rarely read (GET with
-- ?include=rewritten_sql, the reviewer's page); the normalised text is
-- never read back. They move out of the queries row, which every read of
-- a query fetches, to their own table, one row per query, carried across
-- from every existing row.
CREATE TABLE query_texts (
	query_id BIGINT PRIMARY KEY REFERENCES queries (id),
	rewritten TEXT NOT NULL,
	normalized TEXT NOT NULL
);
INSERT INTO query_texts (query_id, rewritten, normalized)
	SELECT id, rewritten, normalized FROM queries;
ALTER TABLE queries DROP COLUMN rewritten;
ALTER TABLE queries DROP COLUMN normalized;

-- LockAuditHead in one round trip: take the audit chain's lock, then read
-- the head. A VOLATILE function's statements each take a new snapshot
-- under READ COMMITTED, so the head read after the lock sees every append
-- committed before it was granted (one statement doing both would read
-- with a snapshot taken before it waited).
CREATE FUNCTION tre_lock_audit_head(OUT seq BIGINT, OUT hash TEXT) VOLATILE LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_advisory_xact_lock(hashtextextended('tre.audit.' || current_schema(), 0));
	SELECT a.seq, a.hash INTO seq, hash FROM audit_log a ORDER BY a.seq DESC LIMIT 1;
END
$$;

-- Issue 24: a query's rewritten SQL (~10 kB) and normalised text are
-- written once, at submission, and rarely read (GET with
-- ?include=rewritten_sql, the reviewer's page); the normalised text is
-- never read back. In the queries row they pushed every row into overflow
-- pages that each read of the row (the researcher's GET, lists, the
-- lease) paged in. They move to their own table, one row per query,
-- carried across from every existing row.
CREATE TABLE query_texts (
	query_id INTEGER PRIMARY KEY REFERENCES queries (id),
	rewritten TEXT NOT NULL,
	normalized TEXT NOT NULL
);
INSERT INTO query_texts (query_id, rewritten, normalized)
	SELECT id, rewritten, normalized FROM queries;
ALTER TABLE queries DROP COLUMN rewritten;
ALTER TABLE queries DROP COLUMN normalized;

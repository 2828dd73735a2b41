-- Codelists (issue 20): public, immutable lists of clinical codes that
-- queries join as the lookup table codelists(codelist, code, term). A new
-- version is a new name. hash is the SHA-256 of the canonical form
-- (job.CodelistHash). first_terms is a JSON array of the first terms.
CREATE TABLE codelists (
	name TEXT PRIMARY KEY,
	description TEXT NOT NULL,
	hash TEXT NOT NULL,
	code_count INTEGER NOT NULL,
	first_terms TEXT NOT NULL,
	uploaded_by TEXT NOT NULL,
	created_at INTEGER NOT NULL
);
CREATE INDEX codelists_created ON codelists (created_at, name);

-- The codes, in upload order (position).
CREATE TABLE codelist_codes (
	codelist TEXT NOT NULL REFERENCES codelists (name),
	position INTEGER NOT NULL,
	code TEXT NOT NULL,
	term TEXT NOT NULL,
	PRIMARY KEY (codelist, position)
);

-- Which queries use which codelist, with the hash it had at submission.
-- queries.codelists holds the same as JSON for reading a query whole.
CREATE TABLE query_codelists (
	query_id INTEGER NOT NULL REFERENCES queries (id),
	codelist TEXT NOT NULL REFERENCES codelists (name),
	hash TEXT NOT NULL,
	PRIMARY KEY (query_id, codelist)
);
CREATE INDEX query_codelists_codelist ON query_codelists (codelist, query_id);

ALTER TABLE queries ADD COLUMN codelists TEXT NOT NULL DEFAULT '[]';

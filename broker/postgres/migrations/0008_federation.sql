-- Federation (issue 21): one dataset held by several sites, one query run
-- at each of them.
--
-- A dataset may now be published by several sites whose catalogs agree
-- (broker.PublishCatalog compares their canonical forms): one catalog row
-- per (dataset, site). since is when the site first published the dataset
-- (kept when it publishes again); the earliest holder is the one a
-- single-site query made before the dataset became federated runs at.
ALTER TABLE catalogs ADD COLUMN since BIGINT NOT NULL DEFAULT 0;
UPDATE catalogs SET since = published_at;
ALTER TABLE catalogs DROP CONSTRAINT catalogs_pkey;
ALTER TABLE catalogs ADD PRIMARY KEY (dataset, site_id);

-- A federated query: sites is how many sites it runs at (0 for a query
-- over a dataset one site holds); disjoint is 1 when the catalog declared
-- disjoint populations; ledger_factor multiplies its cost in the
-- project's ledger (1 under parallel composition over disjoint
-- populations, else the number of sites charged); deadline_at is when it
-- fails as a whole if not every site has reported (0: none).
ALTER TABLE queries ADD COLUMN sites INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queries ADD COLUMN disjoint INTEGER NOT NULL DEFAULT 0;
ALTER TABLE queries ADD COLUMN ledger_factor INTEGER NOT NULL DEFAULT 1;
ALTER TABLE queries ADD COLUMN deadline_at BIGINT NOT NULL DEFAULT 0;

-- One job per site of a federated query, created when it is approved.
-- status: pending (not leased yet), running, done (partial stored),
-- failed. ledger is the site's ledger state for the query (reserved,
-- charged, freed): the per-site budget ledgers are derived from it.
-- partial is the site's protected partial result (dp.Partial JSON), '' until
-- it reports.
CREATE TABLE query_jobs (
	query_id BIGINT NOT NULL REFERENCES queries (id),
	site_id TEXT NOT NULL REFERENCES sites (id),
	project_id BIGINT NOT NULL REFERENCES projects (id),
	status TEXT NOT NULL,
	attempts INTEGER NOT NULL DEFAULT 0,
	lease_token_hash TEXT NOT NULL DEFAULT '',
	lease_expires_at BIGINT NOT NULL DEFAULT 0,
	ledger TEXT NOT NULL,
	partial TEXT NOT NULL DEFAULT '',
	failure_code TEXT NOT NULL DEFAULT '',
	failure_message TEXT NOT NULL DEFAULT '',
	updated_at BIGINT NOT NULL,
	PRIMARY KEY (query_id, site_id)
);
CREATE INDEX query_jobs_site ON query_jobs (site_id, status, query_id);
CREATE INDEX query_jobs_ledger ON query_jobs (project_id, site_id, ledger);
CREATE INDEX queries_deadline ON queries (deadline_at) WHERE deadline_at > 0;

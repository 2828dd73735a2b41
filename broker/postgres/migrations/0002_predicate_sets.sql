-- The differencing risk flag's lookup (broker.PredicateKeys): one row per
-- distinct predicate set of a shape in a project, with the latest query that
-- has it, and the keys that set matches on. Existing queries are backfilled
-- in Go (sqlstore's backfills) in this migration's transaction.
CREATE TABLE predicate_sets (
	project_id BIGINT NOT NULL REFERENCES projects (id),
	set_key TEXT NOT NULL,
	latest_query_id BIGINT NOT NULL REFERENCES queries (id),
	PRIMARY KEY (project_id, set_key)
);

CREATE TABLE predicate_set_keys (
	project_id BIGINT NOT NULL,
	match_key TEXT NOT NULL,
	set_key TEXT NOT NULL,
	PRIMARY KEY (project_id, match_key, set_key),
	FOREIGN KEY (project_id, set_key) REFERENCES predicate_sets (project_id, set_key)
);

-- Budget totals (FindProject) read only the index, not the queries' rows,
-- which hold the long SQL texts (an index-only scan).
CREATE INDEX queries_ledger_cost ON queries (project_id, ledger, cost_epsilon, cost_delta);

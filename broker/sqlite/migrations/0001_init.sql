-- Times are Unix microseconds (UTC); 0 means unset.
CREATE TABLE projects (
	id INTEGER PRIMARY KEY,
	title TEXT NOT NULL,
	organisation TEXT NOT NULL,
	purpose TEXT NOT NULL,
	lawful_basis TEXT NOT NULL,
	data_sharing_agreement TEXT NOT NULL DEFAULT '',
	members TEXT NOT NULL,
	datasets TEXT NOT NULL,
	epsilon_budget REAL NOT NULL,
	delta_budget REAL NOT NULL,
	starts_at INTEGER NOT NULL,
	expires_at INTEGER NOT NULL,
	status TEXT NOT NULL,
	created_by TEXT NOT NULL,
	created_at INTEGER NOT NULL
);

CREATE TABLE project_members (
	project_id INTEGER NOT NULL REFERENCES projects (id),
	subject TEXT NOT NULL,
	PRIMARY KEY (project_id, subject)
);
CREATE INDEX project_members_subject ON project_members (subject, project_id);

CREATE TABLE sites (
	id TEXT PRIMARY KEY,
	last_seen INTEGER NOT NULL,
	version TEXT NOT NULL DEFAULT ''
);

CREATE TABLE catalogs (
	dataset TEXT PRIMARY KEY,
	site_id TEXT NOT NULL REFERENCES sites (id),
	hash TEXT NOT NULL,
	body TEXT NOT NULL,
	published_at INTEGER NOT NULL
);
CREATE INDEX catalogs_site ON catalogs (site_id);

CREATE TABLE queries (
	id INTEGER PRIMARY KEY,
	project_id INTEGER NOT NULL REFERENCES projects (id),
	dataset TEXT NOT NULL,
	sql_text TEXT NOT NULL,
	sql_hash TEXT NOT NULL,
	purpose TEXT NOT NULL,
	rewritten TEXT NOT NULL,
	status TEXT NOT NULL,
	submitted_by TEXT NOT NULL,
	submitted_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL,
	cost_epsilon REAL NOT NULL,
	cost_delta REAL NOT NULL,
	accuracy TEXT NOT NULL,
	risk_flags TEXT NOT NULL,
	approved_by TEXT NOT NULL DEFAULT '',
	attempts INTEGER NOT NULL DEFAULT 0,
	failure_code TEXT NOT NULL DEFAULT '',
	normalized TEXT NOT NULL,
	normalized_hash TEXT NOT NULL,
	shape_hash TEXT NOT NULL,
	predicates TEXT NOT NULL,
	ledger TEXT NOT NULL,
	lease_token_hash TEXT NOT NULL DEFAULT '',
	lease_site TEXT NOT NULL DEFAULT '',
	lease_expires_at INTEGER NOT NULL DEFAULT 0,
	failure_message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX queries_status ON queries (status, id);
CREATE INDEX queries_ledger ON queries (project_id, ledger);
CREATE INDEX queries_normalized ON queries (project_id, normalized_hash, id);
CREATE INDEX queries_shape ON queries (project_id, shape_hash, id);

CREATE TABLE query_events (
	id INTEGER PRIMARY KEY,
	query_id INTEGER NOT NULL REFERENCES queries (id),
	from_status TEXT NOT NULL,
	to_status TEXT NOT NULL,
	actor TEXT NOT NULL,
	comment TEXT NOT NULL,
	at INTEGER NOT NULL
);
CREATE INDEX query_events_query ON query_events (query_id, id);

CREATE TABLE outputs (
	query_id INTEGER PRIMARY KEY REFERENCES queries (id),
	site_id TEXT NOT NULL,
	result TEXT NOT NULL,
	created_at INTEGER NOT NULL,
	released_at INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE audit_log (
	seq INTEGER PRIMARY KEY,
	at INTEGER NOT NULL,
	actor TEXT NOT NULL,
	action TEXT NOT NULL,
	object TEXT NOT NULL,
	detail TEXT NOT NULL,
	prev_hash TEXT NOT NULL,
	hash TEXT NOT NULL
);
CREATE INDEX audit_log_object ON audit_log (object, seq);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);

-- Token buckets shared by every broker replica on the database (issue 25):
-- the submission rate limit holds per user across replicas. A bucket that
-- has refilled is the same as no row, so idle rows may be deleted.
CREATE TABLE rate_buckets (
	name TEXT PRIMARY KEY,
	tokens DOUBLE PRECISION NOT NULL,
	updated_at BIGINT NOT NULL
);
CREATE INDEX rate_buckets_updated ON rate_buckets (updated_at);

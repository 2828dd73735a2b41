-- Issue 24: a submission's repeat lookup wants the project's earliest
-- released query with the same normalised hash. Through queries_normalized
-- alone that read every earlier repeat's row to learn its status, a cost
-- growing with the project's repeats; this index holds released queries
-- only, so the lookup is one probe here and one in queries_normalized
-- (sqlstore's findRepeatWhere). A query becomes released once; the
-- status index already makes every status change update an index.
CREATE INDEX queries_released ON queries (project_id, normalized_hash, id) WHERE status = 'released';

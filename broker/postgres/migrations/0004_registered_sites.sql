-- Sites are registered by an admin before their agent may act (issue 16).
-- A row with registered_at = 0 is a site an agent announced before
-- registration existed: it stays refused until an admin registers it.
ALTER TABLE sites ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE sites ADD COLUMN organisation TEXT NOT NULL DEFAULT '';
ALTER TABLE sites ADD COLUMN registered_by TEXT NOT NULL DEFAULT '';
ALTER TABLE sites ADD COLUMN registered_at BIGINT NOT NULL DEFAULT 0;

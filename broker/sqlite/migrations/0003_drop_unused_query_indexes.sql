-- Every submission and every ledger change updated these two indexes, and
-- nothing reads them any more: queries_ledger (project_id, ledger) is a
-- prefix of queries_ledger_cost (migration 0002), which serves the budget
-- totals and the register; queries_shape served the same-shape lookup that
-- the predicate sets (migration 0002) replaced.
DROP INDEX IF EXISTS queries_ledger;
DROP INDEX IF EXISTS queries_shape;

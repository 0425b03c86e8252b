-- Identical decisions (same app, identity, policy, decision, reason and
-- source address) that fall in one flush window of the audit writer are
-- one row: `decisions` counts them, `at_ms` is the first and `last_at_ms`
-- the last. Rows written before this migration are single decisions.
ALTER TABLE audit_log ADD COLUMN decisions BIGINT NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN last_at_ms BIGINT;

-- When a spent single enters the published filter: the later of the end of its transfer window
-- (`until_at`) and the time the ledger learnt it. A late offline sync moves `until_at` into the
-- past; `listed_at` then says "when it was synced", so the coordinator's incremental filter
-- update, which reads what was listed since its last run (with a margin for transactions still
-- open), sees it. The index also serves the full rebuild by reading only itself.
ALTER TABLE tickets ADD COLUMN listed_at INTEGER NOT NULL DEFAULT 0;
UPDATE tickets SET listed_at = until_at;
DROP INDEX tickets_keyset;
CREATE INDEX tickets_listed ON tickets (keyset_id, listed_at, serial);

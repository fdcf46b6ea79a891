-- keel-settings-sync: a timed value (PUT ...?revert_after=15m) returns to the value before at this time
-- (milliseconds since the Unix epoch); NULL for a plain write. Any later write replaces it.
ALTER TABLE settings ADD COLUMN revert_at BIGINT;

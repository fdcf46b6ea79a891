ALTER TABLE settings DROP COLUMN revert_at;

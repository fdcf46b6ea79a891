ALTER TABLE settings_audit DROP COLUMN reverted_from;

-- keel-settings-sync: a change that restores an earlier version names it (POST /api/v1/settings/{name}/revert).
ALTER TABLE settings_audit ADD COLUMN reverted_from BIGINT;

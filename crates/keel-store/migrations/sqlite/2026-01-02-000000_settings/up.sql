-- keel-settings-sync: one row per settings document, one audit row per change.
-- Times are milliseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    version BIGINT NOT NULL CHECK (version > 0),
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    old_value TEXT,
    new_value TEXT NOT NULL,
    actor TEXT NOT NULL,
    changed_at BIGINT NOT NULL,
    UNIQUE (name, version)
);

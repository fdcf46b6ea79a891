-- keel-write-behind's reference service: versioned key/value entries, and the
-- items a write-behind queue could not persist. Times are microseconds since
-- the Unix epoch; JSON is stored as text.
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS write_behind_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    item TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at BIGINT NOT NULL
);

-- Store-wide facts: which schema generation this database carries and when it
-- was first initialised. Later migrations add each crate's tables.
CREATE TABLE IF NOT EXISTS keel_meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT OR IGNORE INTO keel_meta (key, value) VALUES ('initialised_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));

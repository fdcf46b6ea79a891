-- Store-wide facts: which schema generation this database carries and when it
-- was first initialised. Later migrations add each crate's tables.
CREATE TABLE IF NOT EXISTS keel_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO keel_meta (key, value) VALUES ('initialised_at', now()::text)
ON CONFLICT (key) DO NOTHING;

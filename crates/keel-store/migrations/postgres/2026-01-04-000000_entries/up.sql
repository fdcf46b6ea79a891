-- keel-write-behind's reference service: versioned key/value entries, and the
-- items a write-behind queue could not persist.
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    value JSONB NOT NULL,
    version BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT false
) WITH (fillfactor = 80);
CREATE TABLE IF NOT EXISTS write_behind_dead_letters (
    id BIGSERIAL PRIMARY KEY,
    queue TEXT NOT NULL,
    item JSONB NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

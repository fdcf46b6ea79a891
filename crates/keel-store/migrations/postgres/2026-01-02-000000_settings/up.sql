-- keel-settings-sync: one row per settings document, one audit row per change.
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value JSONB NOT NULL,
    version BIGINT NOT NULL CHECK (version > 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings_audit (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    old_value JSONB,
    new_value JSONB NOT NULL,
    actor TEXT NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

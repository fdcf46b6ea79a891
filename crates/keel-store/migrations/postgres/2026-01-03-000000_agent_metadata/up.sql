-- keel-batcher's reference service: the latest metadata value per agent and key.
CREATE TABLE IF NOT EXISTS agent_metadata (
    agent_id UUID NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    collected_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (agent_id, key)
) WITH (fillfactor = 70); -- room on each page for HOT updates: rows are rewritten in place by every flush

-- keel-batcher's reference service: the latest metadata value per agent and key.
-- collected_at is microseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS agent_metadata (
    agent_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    collected_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, key)
);

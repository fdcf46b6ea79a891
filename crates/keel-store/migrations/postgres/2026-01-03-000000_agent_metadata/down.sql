DROP TABLE IF EXISTS agent_metadata;

-- 5: channels (an edge's deliveries carried by outbound-only agents), the agents seen on
-- them, executions an agent follows, and an agent's journal of outcomes for its edge
ALTER TABLE deliveries ADD COLUMN channel TEXT;
CREATE INDEX deliveries_channel ON deliveries(channel, status, id) WHERE channel IS NOT NULL;
ALTER TABLE executions ADD COLUMN channel TEXT;
CREATE TABLE agents (
    channel TEXT NOT NULL,
    agent TEXT NOT NULL,
    address TEXT,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    cursor TEXT,
    acked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, agent)
);
CREATE TABLE journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    created_at REAL NOT NULL
);

-- 3: per-item keys of batch requests, and single-use tokens
CREATE TABLE event_items (key TEXT PRIMARY KEY, event_id TEXT NOT NULL);
CREATE INDEX event_items_event ON event_items(event_id);
CREATE TABLE nonces (key TEXT PRIMARY KEY, event_id TEXT NOT NULL);
CREATE INDEX nonces_event ON nonces(event_id);

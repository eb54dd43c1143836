-- 1: events, the outbox (deliveries), attempts, route state, metadata
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    provider TEXT NOT NULL,
    event_type TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    received_at REAL NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    callback_url TEXT
);
CREATE UNIQUE INDEX events_key ON events(idempotency_key);
CREATE INDEX events_received ON events(received_at);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    route TEXT NOT NULL,
    trigger TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    execution_id TEXT,
    last_error TEXT,
    replay_of TEXT
);
CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX deliveries_event ON deliveries(event_id);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    latency_ms REAL NOT NULL,
    outcome TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    response_excerpt TEXT
);
CREATE INDEX attempts_delivery ON attempts(delivery_id);
CREATE TABLE routes (
    name TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    reason TEXT,
    changed_at REAL NOT NULL,
    next_probe_at REAL
);

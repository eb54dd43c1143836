-- 2: executions followed to their end, and the callbacks they produce
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    route TEXT NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    node_results TEXT,
    error TEXT,
    started_at TEXT,
    completed_at TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    deadline_at DOUBLE PRECISION NOT NULL,
    next_check_at DOUBLE PRECISION NOT NULL,
    checks INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX executions_due ON executions(status, next_check_at);
CREATE INDEX executions_event ON executions(event_id);
CREATE TABLE callbacks (
    id TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    url TEXT NOT NULL,
    sender_supplied INTEGER NOT NULL,
    body BYTEA NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    last_error TEXT
);
CREATE INDEX callbacks_due ON callbacks(status, next_attempt_at);
CREATE INDEX callbacks_execution ON callbacks(execution_id);

-- 12: secrets a provider hands over in its handshake (Asana's X-Hook-Secret), one per source,
-- kept here so every replica (and the edge in front of an agent) verifies with the same one
CREATE TABLE learned_secrets (
    source TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    learned_at DOUBLE PRECISION NOT NULL
);

-- 4: when a delivery may first have reached the platform (its answer lost, or a 5xx), so it
-- is never resent once the platform may have forgotten its Idempotency-Key; and the signed
-- content's key of events whose scheme signs no id, unique like the idempotency key
ALTER TABLE deliveries ADD COLUMN reached_at DOUBLE PRECISION;
ALTER TABLE events ADD COLUMN fingerprint BYTEA;
CREATE UNIQUE INDEX events_fingerprint ON events(fingerprint) WHERE fingerprint IS NOT NULL;

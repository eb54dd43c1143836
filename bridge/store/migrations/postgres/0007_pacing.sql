-- 7: pacing shared by every process sending to the platform: the rate limit's token bucket
-- and the hold a 429 (or a nearly spent X-RateLimit-Remaining) asked for
CREATE TABLE pacing (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION,
    rate DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    not_before DOUBLE PRECISION
);

-- 10: console sessions, server side: the cookie holds only an opaque id (its digest is the
-- key here), so signing out ends the session and a stolen cookie tells nothing of a token
CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

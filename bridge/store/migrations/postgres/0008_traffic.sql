-- 8: traffic per minute (webhooks accepted, duplicate, rejected by source; deliveries
-- delivered, retried, dead by route), for the console's pictures: counted in memory and
-- added every few seconds, so it costs nothing per event
CREATE TABLE traffic (
    minute INTEGER NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    outcome TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (minute, kind, name, outcome)
);

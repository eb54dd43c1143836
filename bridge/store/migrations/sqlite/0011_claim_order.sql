-- 11: claims take due work oldest first, ties by id (ids are time-ordered): the same order on
-- both stores, whatever the plan, and each claim still walks one index and stops at its limit
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at, id);
DROP INDEX executions_due;
CREATE INDEX executions_due ON executions(status, next_check_at, id);
DROP INDEX callbacks_due;
CREATE INDEX callbacks_due ON callbacks(status, next_attempt_at, id);

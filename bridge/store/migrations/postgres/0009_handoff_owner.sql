-- 9: a hand-off keeps its agent (reports must answer that agent's lease) and a deadline for
-- its next report; those handed off before, with neither, go back to their channel at once
-- (the same Idempotency-Key: the platform runs each once)
UPDATE deliveries SET lease_until = 0
 WHERE status = 'handed_off' AND lease_owner IS NULL;

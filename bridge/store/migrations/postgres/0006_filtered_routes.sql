-- 6: the routes whose filter did not take an event, and why
ALTER TABLE events ADD COLUMN filtered TEXT;

-- Repair: when each stored copy was last found on its host. Each round checks
-- the copies seen longest ago (a copy not checked yet counts as seen when added).
ALTER TABLE uploads ADD COLUMN checked DOUBLE PRECISION;

CREATE INDEX uploads_check_due ON uploads ((COALESCE(checked, added)));

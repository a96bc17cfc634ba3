-- Not idempotent on purpose: applied twice, CREATE TABLE fails.  The sleep
-- keeps the first runner inside the lock while the second one arrives.
CREATE TABLE par_t (x int);
INSERT INTO par_t VALUES (1);
SELECT pg_sleep(0.5);

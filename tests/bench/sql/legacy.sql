-- The replaced system's reservation: an interactive transaction that locks the drop's one stock row,
-- decrements it and inserts the hold, one round trip per statement.
\set n :n + 1
BEGIN;
SELECT stock FROM dropstock_bench.legacy_drops WHERE id = 1 FOR UPDATE;
UPDATE dropstock_bench.legacy_drops SET stock = stock - 1 WHERE id = 1;
INSERT INTO dropstock_bench.legacy_reservations (drop_id, user_key, expires_at)
     VALUES (1, :client_id * 100000 + :n, now() + interval '60 seconds');
COMMIT;

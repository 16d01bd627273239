-- 100,000 holds on one drop, all falling due at the same instant (:due_in seconds from now), as if
-- 100,000 buyers had reserved and walked away. Stock is taken the way reserve_item takes it.
SELECT id AS sweep_drop, date_trunc('second', now()) + make_interval(secs => :due_in) AS due_at
  FROM dropstock.create_drop('bench sweep drop', 1, 100000, now() - interval '1 minute') \gset
BEGIN;
INSERT INTO dropstock.reservations (drop_id, user_id, expires_at)
SELECT :'sweep_drop', u.id, :'due_at'
  FROM (SELECT id FROM dropstock.users WHERE username LIKE 'bench-%' LIMIT 100000) u;
UPDATE dropstock.stock_slots SET available = 0 WHERE drop_id = :'sweep_drop';
COMMIT;
SELECT :'sweep_drop' AS drop_id, :'due_at' AS due_at;

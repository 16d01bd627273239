-- (k) of `make bench-sql`: :waiting buyers in the line of a drop of :holders units, every unit held by a
-- buyer whose hold falls due at the same instant, :due_in seconds after the line is complete. Holds are
-- taken with reserve_items, the way buyers take them; the places are inserted in one statement, in the
-- order join_waitlist would give them, with the line's length recorded as join_waitlist records it (a
-- move of +1 each), to save 100,000 round trips; bench-sql measures a join at the end of the line apart.
-- Buyers are bench-line-k (id md5('bench-line-' || k)): 1..:holders hold, the next :waiting wait, in
-- that order, and 100 more are left for bench-sql's joins at the end of the line.
SET client_min_messages = warning;
INSERT INTO dropstock.users (id, username)
SELECT md5('bench-line-' || k)::uuid, 'bench-line-' || k
  FROM generate_series(1, :holders + :waiting + 100) AS k
 WHERE NOT EXISTS (SELECT FROM dropstock.users u WHERE u.id = md5('bench-line-' || k)::uuid);
SELECT id AS line_drop FROM dropstock.create_drop('bench line drop', 1, :holders, now() - interval '1 minute', 3600) \gset
-- 1,000 buyers a call, as a shop's batch endpoint would.
SELECT sum((SELECT count(*) FROM dropstock.reserve_items(:'line_drop', buyers) WHERE reservation_id IS NOT NULL)) AS held
  FROM (SELECT array_agg(md5('bench-line-' || k)::uuid ORDER BY k) AS buyers
          FROM generate_series(1, :holders) AS k GROUP BY (k - 1) / 1000) AS batch \gset
WITH joined AS (
    INSERT INTO dropstock.waitlist (drop_id, user_id, variants)
    SELECT :'line_drop', md5('bench-line-' || k)::uuid, '{0}'
      FROM generate_series(:holders + 1, :holders + :waiting) AS k ORDER BY k
    RETURNING 1)
SELECT count(*) AS joined FROM joined \gset
INSERT INTO dropstock.line_moves (drop_id, delta) VALUES (:'line_drop', :joined);
SELECT :held = :holders AND :joined = :waiting AS complete \gset
\if :complete
\else
  \echo 'line-setup: held' :held 'of' :holders ', joined' :joined 'of' :waiting
  DO $$ BEGIN RAISE EXCEPTION 'the line was not set up'; END $$;
\endif
WITH due AS (SELECT date_trunc('second', clock_timestamp()) + make_interval(secs => :due_in + 1) AS at),
     moved AS (UPDATE dropstock.reservations r SET expires_at = due.at FROM due
                WHERE r.drop_id = :'line_drop' AND r.status = 'reserved' RETURNING r.id)
SELECT (SELECT count(*) FROM moved) AS holds, :'line_drop' AS drop_id, (SELECT at FROM due) AS due_at;

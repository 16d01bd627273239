-- dropstock's batch form: one reserve_items call for 16 fresh buyers, one commit for all of them.
\set n :n + 1
SELECT count(*) FROM dropstock.reserve_items(:drop,
    ARRAY(SELECT md5('bench-' || (:client_id * 100000 + (:n - 1) * 16 + i))::uuid FROM generate_series(1, 16) AS i));

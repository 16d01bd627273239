-- The ceiling: a transaction that only inserts one row (one commit, one flush, nothing shared).
\set n :n + 1
INSERT INTO dropstock_bench.ceiling (user_key) VALUES (:client_id * 100000 + :n);

-- (j) one hot size of a sized drop: one unit of "US 9", a fresh buyer each time.
\set n :n + 1
SELECT id FROM dropstock.reserve_item(:drop, md5('bench-' || (:client_id * 100000 + :n))::uuid, 'US 9');

-- Day-two churn: short holds on other drops, made in batches so a million of them come and go quickly.
-- Client c cycles through buyers c * 100000 + 1 .. + :range, moving to its next drop (one per lap) each
-- time it runs out of buyers, so no buyer ever already holds a live hold on the drop named.
\set n :n + 1
\set at (:n - 1) * :batch
\set lap :at / :range
\set first :client_id * 100000 + :at % :range
\set pick :client_id * :laps + :lap + 1
SELECT count(*) FROM dropstock.reserve_items(
    (string_to_array(:drops::text, ' '))[:pick::integer]::uuid,
    ARRAY(SELECT md5('bench-' || (:first::integer + i))::uuid FROM generate_series(1, :batch) AS i));

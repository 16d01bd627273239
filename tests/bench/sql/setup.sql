-- Fixtures for `make bench-sql` (schema dropstock_bench, outside the extension). Safe to run again.
SET client_min_messages = warning;
-- Buyers get ids derived from a number so a pgbench client can name a fresh buyer per transaction:
-- buyer k has id md5('bench-' || k)::uuid, with k = client_id * 100000 + n.
CREATE SCHEMA IF NOT EXISTS dropstock_bench;

-- The batch run (16 buyers a call) uses the first :batch_clients clients with :batch_per_client each.
INSERT INTO dropstock.users (id, username)
SELECT md5('bench-' || k)::uuid, 'bench-' || k
  FROM generate_series(0, :clients - 1) AS c,
       generate_series(1, CASE WHEN c < :batch_clients THEN :batch_per_client ELSE :per_client END) AS n,
       LATERAL (SELECT c * 100000 + n AS k) AS key
 WHERE NOT EXISTS (SELECT FROM dropstock.users u WHERE u.id = md5('bench-' || k)::uuid);

-- The replaced system's tables: one stock row per drop, reservations inserted beside it.
CREATE TABLE IF NOT EXISTS dropstock_bench.legacy_drops (id integer PRIMARY KEY, stock integer NOT NULL);
CREATE TABLE IF NOT EXISTS dropstock_bench.legacy_reservations (
    id bigserial PRIMARY KEY, drop_id integer NOT NULL, user_key integer NOT NULL,
    status text NOT NULL DEFAULT 'reserved', expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
TRUNCATE dropstock_bench.legacy_reservations;
INSERT INTO dropstock_bench.legacy_drops VALUES (1, 100000000)
    ON CONFLICT (id) DO UPDATE SET stock = excluded.stock;

-- The ceiling: a transaction that inserts one row and does nothing else.
CREATE TABLE IF NOT EXISTS dropstock_bench.ceiling (id bigserial PRIMARY KEY, user_key integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
TRUNCATE dropstock_bench.ceiling;

-- Start the measurements from a fresh checkpoint, not in the middle of one the setup's writes caused.
CHECKPOINT;

-- Sample data for `make run`: three buyers and four drops (open, nearly gone, upcoming, sold by size).
-- Safe to run again: it adds only what is missing.
INSERT INTO dropstock.users (username)
SELECT u FROM unnest(ARRAY['ada', 'grace', 'linus']) AS u
ON CONFLICT (username) DO NOTHING;

SELECT dropstock.create_drop(name, price, stock, starts_at)
  FROM (VALUES ('Air Jordan 1 Retro High "Chicago"', 180.00, 100, now() - interval '1 minute'),
               ('Tour hoodie, limited run', 65.00, 5, now() - interval '1 minute'),
               ('Signed skate deck', 250.00, 10, now() + interval '1 hour'))
       AS sample(name, price, stock, starts_at)
 WHERE NOT EXISTS (SELECT FROM dropstock.drops d WHERE d.name = sample.name);

SELECT dropstock.create_drop('Dunk Low "Panda"', 110.00, NULL, now() - interval '1 minute', 60, 2, NULL,
                             '{"US 8": 3, "US 9": 1, "US 10": 4, "US 11": 2}', 1)
 WHERE NOT EXISTS (SELECT FROM dropstock.drops d WHERE d.name = 'Dunk Low "Panda"');

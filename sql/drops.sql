-- Drops: creation, and what a screen shows of them (exact stock and the latest buyers).

-- create_drop: a new drop, each variant's stock striped over min(its stock, 64) slots.
-- `variants`: sizes and their stock as a JSON object, '{"US 8": 2, "US 9": 3}'; total_stock may then be
-- NULL (it is their sum) or must equal it. Labels are trimmed, 1-32 characters, no control characters,
-- unique per drop; each stock a whole number of at least 1; at most 100 sizes. The sizes are numbered
-- from 1 in the order jsonb keeps an object's keys (shorter labels first, then byte order).
-- `max_extensions`: how many times extend_hold may lengthen one hold (0, the default: never).
-- `mode`: 'race' (the default: first come, first served) or 'draw' (buyers enter between starts_at and
-- ends_at, which a draw needs, and a draw orders them; draw.sql).
-- `cooldown_seconds`: how long a buyer whose hold ended while others waited may not reserve the drop
-- (NULL, the default: hold_seconds; 0 to 86400).
CREATE FUNCTION create_drop(
    name           text,
    price          numeric,
    total_stock    integer,
    starts_at      timestamptz DEFAULT now(),
    hold_seconds   integer DEFAULT 60,
    per_user_limit integer DEFAULT 1,
    ends_at        timestamptz DEFAULT NULL,
    variants       jsonb DEFAULT NULL,
    max_extensions integer DEFAULT 0,
    mode           text DEFAULT 'race',
    cooldown_seconds integer DEFAULT NULL
)
RETURNS drops
LANGUAGE plpgsql
AS $$
DECLARE
    clean_name text := btrim(create_drop.name);
    stock integer := create_drop.total_stock;
    sizes record;
    labels text[] := '{}';
    stocks integer[] := '{}';
    clean_label text;
    units numeric;
    created dropstock.drops;
BEGIN
    IF clean_name IS NULL OR regexp_replace(clean_name, '[\s\u200B-\u200F\u2060-\u2064\uFEFF]', '', 'g') = '' THEN
        RAISE EXCEPTION 'name must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF clean_name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'name must not contain control characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(clean_name) > 200 THEN
        RAISE EXCEPTION 'name must be at most 200 characters, got %', length(clean_name)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.price IS NULL OR create_drop.price < 0 OR create_drop.price >= 10000000000
       OR create_drop.price = 'NaN' THEN
        RAISE EXCEPTION 'price must be a number from 0 to 9999999999.99, got %', coalesce(create_drop.price::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.variants IS NOT NULL THEN
        IF jsonb_typeof(create_drop.variants) <> 'object' THEN
            RAISE EXCEPTION 'variants must be a JSON object from size label to stock, got %', jsonb_typeof(create_drop.variants)
                  USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR sizes IN SELECT e.key, e.value FROM jsonb_each(create_drop.variants) AS e LOOP
            clean_label := btrim(sizes.key);
            IF regexp_replace(clean_label, '[\s\u200B-\u200F\u2060-\u2064\uFEFF]', '', 'g') = '' THEN
                RAISE EXCEPTION 'variant label "%" must not be empty', sizes.key USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF clean_label ~ '[[:cntrl:]]' THEN
                RAISE EXCEPTION 'variant label "%" must not contain control characters', clean_label
                      USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF length(clean_label) > 32 THEN
                RAISE EXCEPTION 'variant label "%" must be at most 32 characters, got %', clean_label, length(clean_label)
                      USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF clean_label = ANY (labels) THEN
                RAISE EXCEPTION 'variant label "%" is given twice', clean_label USING ERRCODE = 'invalid_parameter_value';
            END IF;
            units := CASE WHEN jsonb_typeof(sizes.value) = 'number' THEN sizes.value::numeric END;
            IF units IS NULL OR units <> trunc(units) OR units < 1 OR units > 1000000000 THEN
                RAISE EXCEPTION 'stock of variant "%" must be a whole number of at least 1, got %', clean_label, sizes.value
                      USING ERRCODE = 'invalid_parameter_value';
            END IF;
            labels := labels || clean_label;
            stocks := stocks || units::integer;
        END LOOP;
        IF cardinality(labels) = 0 OR cardinality(labels) > 100 THEN
            RAISE EXCEPTION 'a drop has 1 to 100 variants, got %', cardinality(labels)
                  USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT sum(x) FROM unnest(stocks) AS x) > 2147483647 THEN
            RAISE EXCEPTION 'total stock of the variants is too large' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        stock := (SELECT sum(x) FROM unnest(stocks) AS x);
        IF create_drop.total_stock IS NOT NULL AND create_drop.total_stock <> stock THEN
            RAISE EXCEPTION 'total stock % is not the sum of the variants'' stock, %', create_drop.total_stock, stock
                  USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass NULL as total stock.';
        END IF;
    END IF;
    IF stock IS NULL OR stock < 1 THEN
        RAISE EXCEPTION 'total stock must be at least 1, got %', coalesce(stock::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.max_extensions IS NULL OR create_drop.max_extensions < 0 OR create_drop.max_extensions > 100 THEN
        RAISE EXCEPTION 'max extensions must be from 0 to 100, got %', coalesce(create_drop.max_extensions::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.starts_at IS NULL OR NOT isfinite(create_drop.starts_at) THEN
        RAISE EXCEPTION 'start time must be a finite timestamp' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.ends_at IS NOT NULL AND create_drop.ends_at <= create_drop.starts_at THEN
        RAISE EXCEPTION 'end time % must be after start time %', create_drop.ends_at, create_drop.starts_at
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.hold_seconds IS NULL OR create_drop.hold_seconds < 1 OR create_drop.hold_seconds > 86400 THEN
        RAISE EXCEPTION 'hold seconds must be from 1 to 86400, got %', coalesce(create_drop.hold_seconds::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.mode IS NULL OR create_drop.mode NOT IN ('race', 'draw') THEN
        RAISE EXCEPTION 'mode must be ''race'' or ''draw'', got %', coalesce(quote_literal(create_drop.mode), 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.mode = 'draw' AND create_drop.ends_at IS NULL THEN
        RAISE EXCEPTION 'a draw needs an end time: entries close then and the draw runs'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.cooldown_seconds < 0 OR create_drop.cooldown_seconds > 86400 THEN
        RAISE EXCEPTION 'cooldown seconds must be from 0 to 86400, got %', create_drop.cooldown_seconds
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF create_drop.per_user_limit IS NULL OR create_drop.per_user_limit < 1 THEN
        RAISE EXCEPTION 'per-user limit must be at least 1, got %', coalesce(create_drop.per_user_limit::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO dropstock.drops AS d (name, price, total_stock, starts_at, ends_at, hold_seconds, per_user_limit,
                                      sized, max_extensions, mode, cooldown_seconds)
    VALUES (clean_name, round(create_drop.price, 2), stock, create_drop.starts_at,
            create_drop.ends_at, create_drop.hold_seconds, create_drop.per_user_limit,
            create_drop.variants IS NOT NULL, create_drop.max_extensions, create_drop.mode,
            create_drop.cooldown_seconds)
    RETURNING d.* INTO created;

    IF created.sized THEN
        INSERT INTO dropstock.variants (drop_id, variant, label, total_stock)
        SELECT created.id, v.n, v.label, v.units
          FROM unnest(labels, stocks) WITH ORDINALITY AS v(label, units, n);
    ELSE
        INSERT INTO dropstock.variants (drop_id, variant, label, total_stock) VALUES (created.id, 0, NULL, stock);
    END IF;
    INSERT INTO dropstock.stock_slots (drop_id, variant, slot, available)
    SELECT created.id, v.variant, s, v.total_stock / least(v.total_stock, 64) + (s < v.total_stock % least(v.total_stock, 64))::integer
      FROM dropstock.variants v
     CROSS JOIN LATERAL generate_series(0, least(v.total_stock, 64) - 1) AS s
     WHERE v.drop_id = created.id;
    INSERT INTO dropstock.feed_state (drop_id, available, variants)
    VALUES (created.id, created.total_stock, CASE WHEN created.sized THEN stocks END);
    PERFORM dropstock._tell_worker_at_commit(created.id);  -- the feed shows it within milliseconds (extension/src/wake.rs)
    RETURN created;
END
$$;

-- _line_length: how many buyers wait on the drop: the length at the last publication plus the moves
-- recorded since (see line_moves in schema.sql), never a count of the line.
CREATE FUNCTION _line_length(drop_id uuid)
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce((SELECT f.waiting FROM dropstock.feed_state f WHERE f.drop_id = _line_length.drop_id), 0)
           + coalesce((SELECT sum(m.delta)::integer FROM dropstock.line_moves m WHERE m.drop_id = _line_length.drop_id), 0)
$$;

-- Every drop with its exact stock split three ways (in total, and per size for a sized drop) and its
-- three most recent buyers. The lateral subqueries read the drop's slot rows (at most 64 per variant)
-- and 3 feed entries, and a filter on id reaches inside them.
CREATE VIEW drop_summaries AS
SELECT d.id,
       d.name,
       d.price,
       d.total_stock,
       st.available                              AS available_stock,
       d.total_stock - st.available - st.sold    AS held_stock,
       st.sold                                   AS sold_stock,
       d.starts_at,
       d.ends_at,
       d.hold_seconds,
       d.per_user_limit,
       d.created_at,
       ARRAY(SELECT ROW(p.id, p.user_id, u.username, p.created_at)::dropstock.recent_purchase
               FROM dropstock.purchases p
               JOIN dropstock.users u ON u.id = p.user_id
              WHERE p.drop_id = d.id
              ORDER BY p.created_at DESC, p.id
              LIMIT 3)                           AS recent_purchases,
       d.max_extensions,
       -- Sizes only: a drop without them shows an empty list, as before sizes existed.
       ARRAY(SELECT ROW(v.variant, v.label, v.total_stock, vs.available,
                        v.total_stock - vs.available - vs.sold, vs.sold)::dropstock.variant_stock
               FROM dropstock.variants v
              CROSS JOIN LATERAL (SELECT sum(s.available)::integer AS available, sum(s.sold)::integer AS sold
                                    FROM dropstock.stock_slots s
                                   WHERE s.drop_id = v.drop_id AND s.variant = v.variant) vs
              WHERE d.sized AND v.drop_id = d.id
              ORDER BY v.variant)                AS variants,
       d.mode,
       dropstock._line_length(d.id)             AS waiting
  FROM dropstock.drops d
 CROSS JOIN LATERAL (SELECT sum(s.available)::integer AS available, sum(s.sold)::integer AS sold
                       FROM dropstock.stock_slots s
                      WHERE s.drop_id = d.id) st;

-- active_drops: drops that have not ended (upcoming ones included, so a screen can count down),
-- soonest first. A draw's end closes its entries, not its sales: it stays until it is drawn and its
-- winners' holds and its line are done with.
CREATE FUNCTION active_drops()
RETURNS SETOF drop_summaries
LANGUAGE sql
STABLE
AS $$
    SELECT * FROM dropstock.drop_summaries s
     -- The first test reads only the drop's own row, so it is applied while the drops are scanned, before
     -- any stock is summed. Alone, the second involves summed columns and was checked only after every
     -- drop ever made had been summed: 435 ms to find none active among 10,000 ended drops, against 3 ms.
     WHERE (s.ends_at IS NULL OR s.ends_at > now() OR s.mode = 'draw')
       AND (s.ends_at IS NULL OR s.ends_at > now()
            OR (s.mode = 'draw' AND (s.waiting > 0 OR s.held_stock > 0
                                     OR NOT EXISTS (SELECT FROM dropstock.draws w WHERE w.drop_id = s.id))))
     ORDER BY s.starts_at, s.created_at, s.id
$$;

-- drop_status: one drop, ended or not.
CREATE FUNCTION drop_status(drop_id uuid)
RETURNS drop_summaries
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    summary dropstock.drop_summaries;
BEGIN
    IF drop_status.drop_id IS NULL THEN
        RAISE EXCEPTION 'drop id is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO summary FROM dropstock.drop_summaries s WHERE s.id = drop_status.drop_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', drop_status.drop_id USING ERRCODE = 'DS001';
    END IF;
    RETURN summary;
END
$$;

-- variant_status: one row per variant of the drop, by variant number: its stock split three ways. A
-- drop without sizes has one row, variant 0 with no label.
CREATE FUNCTION variant_status(drop_id uuid)
RETURNS SETOF variant_stock
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    IF variant_status.drop_id IS NULL THEN
        RAISE EXCEPTION 'drop id is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT v.variant, v.label, v.total_stock, vs.available, v.total_stock - vs.available - vs.sold, vs.sold
          FROM dropstock.variants v
         CROSS JOIN LATERAL (SELECT sum(s.available)::integer AS available, sum(s.sold)::integer AS sold
                               FROM dropstock.stock_slots s
                              WHERE s.drop_id = v.drop_id AND s.variant = v.variant) vs
         WHERE v.drop_id = variant_status.drop_id
         ORDER BY v.variant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', variant_status.drop_id USING ERRCODE = 'DS001';
    END IF;
END
$$;

-- drop_buyers: the buyers who hold units of the drop (live or past due but not yet swept) or bought
-- some. While a drop is sold out and nobody waits in its line, reserve_item tells everybody else "sold
-- out" whatever they ask, so a front end that knows this list can answer them without a call (the
-- HTTP adapter's sold-out shortcut); these buyers' calls must still reach reserve_item, which gives a
-- holder their hold back and tells a buyer at their limit so.
CREATE FUNCTION drop_buyers(drop_id uuid)
RETURNS SETOF uuid
LANGUAGE sql
STABLE
AS $$
    SELECT r.user_id FROM dropstock.reservations r WHERE r.drop_id = drop_buyers.drop_id AND r.status = 'reserved'
    UNION
    SELECT p.user_id FROM dropstock.purchases p WHERE p.drop_id = drop_buyers.drop_id
$$;

-- Drops: creation, and what a screen shows of them (exact stock and the latest buyers).

-- create_drop: a new drop with its stock striped over min(total_stock, 64) slots.
CREATE FUNCTION create_drop(
    name           text,
    price          numeric,
    total_stock    integer,
    starts_at      timestamptz DEFAULT now(),
    hold_seconds   integer DEFAULT 60,
    per_user_limit integer DEFAULT 1,
    ends_at        timestamptz DEFAULT NULL
)
RETURNS drops
LANGUAGE plpgsql
AS $$
DECLARE
    clean_name text := btrim(create_drop.name);
    slots integer;
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
    IF create_drop.total_stock IS NULL OR create_drop.total_stock < 1 THEN
        RAISE EXCEPTION 'total stock must be at least 1, got %', coalesce(create_drop.total_stock::text, 'NULL')
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
    IF create_drop.per_user_limit IS NULL OR create_drop.per_user_limit < 1 THEN
        RAISE EXCEPTION 'per-user limit must be at least 1, got %', coalesce(create_drop.per_user_limit::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO dropstock.drops AS d (name, price, total_stock, starts_at, ends_at, hold_seconds, per_user_limit)
    VALUES (clean_name, round(create_drop.price, 2), create_drop.total_stock, create_drop.starts_at,
            create_drop.ends_at, create_drop.hold_seconds, create_drop.per_user_limit)
    RETURNING d.* INTO created;

    slots := least(created.total_stock, 64);
    INSERT INTO dropstock.stock_slots (drop_id, slot, available)
    SELECT created.id, s, created.total_stock / slots + (s < created.total_stock % slots)::integer
      FROM generate_series(0, slots - 1) AS s;
    INSERT INTO dropstock.feed_state (drop_id, available) VALUES (created.id, created.total_stock);
    RETURN created;
END
$$;

-- Every drop with its exact stock split three ways and its three most recent buyers. The lateral
-- subqueries read at most 64 slot rows and 3 feed entries, and a filter on id reaches inside them.
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
              LIMIT 3)                           AS recent_purchases
  FROM dropstock.drops d
 CROSS JOIN LATERAL (SELECT sum(s.available)::integer AS available, sum(s.sold)::integer AS sold
                       FROM dropstock.stock_slots s
                      WHERE s.drop_id = d.id) st;

-- active_drops: drops that have not ended (upcoming ones included, so a screen can count down),
-- soonest first.
CREATE FUNCTION active_drops()
RETURNS SETOF drop_summaries
LANGUAGE sql
STABLE
AS $$
    SELECT * FROM dropstock.drop_summaries
     WHERE ends_at IS NULL OR ends_at > now()
     ORDER BY starts_at, created_at, id
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

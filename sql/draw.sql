-- Draws: for the hottest drops, a draw instead of a race. A drop created with mode 'draw' takes entries
-- between starts_at and ends_at (enter_draw; no stock moves); when entries close, the worker runs the
-- draw (run_due_draws), or an admin does (run_draw). The draw orders the entries by
--     sha256(seed || entry id)        (the seed's UTF-8 bytes, then the id's 16 bytes; ties by entry id)
-- and makes that order the drop's waiting list: the first entries get offers at once, as many as the
-- stock serves, and each unit that comes back later (an offer lapsing, a cancel) goes to the next entry,
-- as on any waiting list (waitlist.sql). The seed is made when the draw runs (unless the admin gives
-- one), after every entry id exists, and is published with the order (draw_status, draw_result), so
-- anyone can recompute the order from public data.
--
-- Entries and the draw are kept apart by the draw's line lock (_line_key(drop, -1)): an entry takes it
-- shared, the draw exclusive, so an entry either commits before the draw reads the entries or finds
-- the drop drawn.

-- _draw_entry_answer: an entry as enter_draw answers it.
CREATE FUNCTION _draw_entry_answer(drop_id uuid, user_id uuid, fresh boolean)
RETURNS draw_entry
LANGUAGE sql
STABLE
AS $$
    SELECT ROW(e.id, e.drop_id, e.user_id, dropstock._variants_to_labels(e.drop_id, e.variants), e.quantity,
               e.entered_at, _draw_entry_answer.fresh)::dropstock.draw_entry
      FROM dropstock.draw_entries e
     WHERE e.drop_id = _draw_entry_answer.drop_id AND e.user_id = _draw_entry_answer.user_id
$$;

-- enter_draw: enter the buyer into the drop's draw for `quantity` units of any of the sizes named (one
-- as `variant`, several as `variants`, none on a drop without sizes). One entry per buyer: entering
-- again returns the same entry, unchanged (fresh = false).
-- Refusals: DS001 unknown drop, DS002 unknown buyer, DS010 entries not open yet, DS011 entries closed
-- (ends_at passed, or drawn), DS012 no size named on a sized drop, DS013 no such size, DS015 not a draw
-- (reserve instead), DS021 per-buyer limit; 22023 for a missing argument or a quantity outside 1..10000.
CREATE FUNCTION enter_draw(drop_id uuid, user_id uuid, variants text[], quantity integer DEFAULT 1)
RETURNS draw_entry
LANGUAGE plpgsql
AS $$
DECLARE
    d dropstock.drops;
    numbers smallint[];
BEGIN
    d := dropstock._entry_drop(enter_draw.drop_id, enter_draw.user_id, enter_draw.variants, enter_draw.quantity);
    IF d.mode <> 'draw' THEN
        RAISE EXCEPTION 'drop "%" is not a draw', d.name USING ERRCODE = 'DS015', HINT = 'Reserve it.';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(dropstock._line_key(d.id, -1::smallint));
    IF clock_timestamp() < d.starts_at THEN
        RAISE EXCEPTION 'the draw of drop "%" has not opened yet', d.name USING ERRCODE = 'DS010',
              DETAIL = format('It opens at %s.', d.starts_at);
    END IF;
    IF clock_timestamp() >= d.ends_at OR EXISTS (SELECT FROM dropstock.draws w WHERE w.drop_id = d.id) THEN
        RAISE EXCEPTION 'the draw of drop "%" is closed', d.name USING ERRCODE = 'DS011',
              DETAIL = format('Entries closed at %s.', d.ends_at);
    END IF;
    numbers := dropstock._labels_to_variants(d, enter_draw.variants);

    PERFORM dropstock._lock_buyers(d.id, ARRAY[enter_draw.user_id]);
    IF NOT EXISTS (SELECT FROM dropstock.users u WHERE u.id = enter_draw.user_id) THEN
        RAISE EXCEPTION 'user % does not exist', enter_draw.user_id USING ERRCODE = 'DS002';
    END IF;
    IF EXISTS (SELECT FROM dropstock.draw_entries e WHERE e.drop_id = d.id AND e.user_id = enter_draw.user_id) THEN
        RETURN dropstock._draw_entry_answer(d.id, enter_draw.user_id, false);
    END IF;
    IF enter_draw.quantity > d.per_user_limit THEN
        RAISE EXCEPTION 'limit of % per buyer for drop "%": % at most, not %', d.per_user_limit, d.name,
              d.per_user_limit, enter_draw.quantity USING ERRCODE = 'DS021';
    END IF;
    INSERT INTO dropstock.draw_entries (drop_id, user_id, variants, quantity)
    VALUES (d.id, enter_draw.user_id, numbers, enter_draw.quantity);
    RETURN dropstock._draw_entry_answer(d.id, enter_draw.user_id, true);
END
$$;

-- enter_draw for one size (or none, on a drop without sizes).
CREATE FUNCTION enter_draw(drop_id uuid, user_id uuid, variant text DEFAULT NULL, quantity integer DEFAULT 1)
RETURNS draw_entry
LANGUAGE sql
AS $$
    SELECT dropstock.enter_draw(drop_id, user_id, CASE WHEN variant IS NULL THEN '{}'::text[] ELSE ARRAY[variant] END,
                                quantity)
$$;

-- run_draw: draw the drop: order its entries (see the top of this file) with `seed` (NULL: 64 random hex
-- digits), make them its waiting list in that order, and give every free unit to the line. Returns the
-- draw as published. Refusals: DS001 unknown drop, DS015 not a draw, DS016 already drawn, DS017
-- entries still open; 22023 for an empty seed or one over 200 characters.
CREATE FUNCTION run_draw(drop_id uuid, seed text DEFAULT NULL)
RETURNS draws
LANGUAGE plpgsql
AS $$
DECLARE
    d dropstock.drops;
    key text := coalesce(run_draw.seed,
                         replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''));
    entered integer;
    units integer;
    v smallint;
    drawn dropstock.draws;
BEGIN
    IF run_draw.drop_id IS NULL THEN
        RAISE EXCEPTION 'drop id is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF key = '' OR length(key) > 200 THEN
        RAISE EXCEPTION 'seed must be 1 to 200 characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = run_draw.drop_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', run_draw.drop_id USING ERRCODE = 'DS001';
    END IF;
    IF d.mode <> 'draw' THEN
        RAISE EXCEPTION 'drop "%" is not a draw', d.name USING ERRCODE = 'DS015';
    END IF;
    PERFORM pg_advisory_xact_lock(dropstock._line_key(d.id, -1::smallint));
    IF EXISTS (SELECT FROM dropstock.draws w WHERE w.drop_id = d.id) THEN
        RAISE EXCEPTION 'drop "%" was already drawn', d.name USING ERRCODE = 'DS016';
    END IF;
    IF clock_timestamp() < d.ends_at THEN
        RAISE EXCEPTION 'entries to the draw of drop "%" are still open', d.name USING ERRCODE = 'DS017',
              DETAIL = format('They close at %s.', d.ends_at);
    END IF;

    -- The order, published with the seed.
    UPDATE dropstock.draw_entries e SET place = o.place
      FROM (SELECT x.id, row_number() OVER (ORDER BY sha256(convert_to(key, 'UTF8') || uuid_send(x.id)), x.id) AS place
              FROM dropstock.draw_entries x WHERE x.drop_id = d.id) o
     WHERE e.id = o.id;
    GET DIAGNOSTICS entered = ROW_COUNT;
    -- The line in that order, before anybody who joins later (whose places come from the sequence and
    -- are positive).
    INSERT INTO dropstock.waitlist (drop_id, user_id, place, variants, quantity, joined_at)
    SELECT e.drop_id, e.user_id, e.place - entered - 1, e.variants, e.quantity, e.entered_at
      FROM dropstock.draw_entries e WHERE e.drop_id = d.id;
    INSERT INTO dropstock.draws (drop_id, seed, entries, winners) VALUES (d.id, key, entered, 0);
    IF entered > 0 THEN
        INSERT INTO dropstock.line_moves (drop_id, delta) VALUES (d.id, entered);
    END IF;

    -- Every free unit to the line, size by size in ascending order (the lock order of stock.sql).
    FOR v IN SELECT x.variant FROM dropstock.variants x WHERE x.drop_id = d.id ORDER BY x.variant LOOP
        PERFORM pg_advisory_xact_lock_shared(dropstock._line_key(d.id, v));
        WITH taken AS (
            SELECT s.slot, s.available FROM dropstock.stock_slots s
             WHERE s.drop_id = d.id AND s.variant = v AND s.available > 0
             ORDER BY s.slot FOR UPDATE
        ), emptied AS (
            UPDATE dropstock.stock_slots s SET available = 0
              FROM taken WHERE s.drop_id = d.id AND s.variant = v AND s.slot = taken.slot
            RETURNING taken.available
        )
        SELECT coalesce(sum(emptied.available), 0) INTO units FROM emptied;
        units := dropstock._serve_line(d.id, v, units);
        IF units > 0 THEN
            PERFORM dropstock._adjust_stock(d.id, v, units, 0);
        END IF;
    END LOOP;
    UPDATE dropstock.draws w
       SET winners = (SELECT count(*) FROM dropstock.reservations r WHERE r.drop_id = d.id AND r.offered)
     WHERE w.drop_id = d.id
    RETURNING w.* INTO drawn;
    PERFORM dropstock._tell_worker_at_commit(d.id);  -- the feed shows it within milliseconds (extension/src/wake.rs)
    RETURN drawn;
END
$$;

-- run_due_draws: run the draws of drops whose entries have closed; returns how many it ran. The worker
-- calls it every tick; without the worker, any scheduler can.
CREATE FUNCTION run_due_draws()
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    due uuid;
    ran integer := 0;
BEGIN
    FOR due IN
        SELECT x.id FROM dropstock.drops x
         WHERE x.mode = 'draw' AND x.ends_at <= clock_timestamp()
           AND NOT EXISTS (SELECT FROM dropstock.draws w WHERE w.drop_id = x.id)
         ORDER BY x.ends_at, x.id
    LOOP
        BEGIN
            PERFORM dropstock.run_draw(due, NULL);
            ran := ran + 1;
        EXCEPTION WHEN SQLSTATE 'DS016' THEN
            NULL;  -- an admin drew it meanwhile
        END;
    END LOOP;
    RETURN ran;
END
$$;

-- draw_status: a draw drop's entries so far and, once drawn, when, with which seed and how many entries
-- got an offer at once. Refusals: DS001 unknown drop, DS015 not a draw.
CREATE FUNCTION draw_status(drop_id uuid)
RETURNS TABLE (entries integer, drawn_at timestamptz, seed text, winners integer)
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    d dropstock.drops;
BEGIN
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = draw_status.drop_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', draw_status.drop_id USING ERRCODE = 'DS001';
    END IF;
    IF d.mode <> 'draw' THEN
        RAISE EXCEPTION 'drop "%" is not a draw', d.name USING ERRCODE = 'DS015';
    END IF;
    RETURN QUERY
        SELECT (SELECT count(*)::integer FROM dropstock.draw_entries e WHERE e.drop_id = d.id),
               w.drawn_at, w.seed, w.winners
          FROM (SELECT 1) one
          LEFT JOIN dropstock.draws w ON w.drop_id = d.id;
END
$$;

-- draw_result: the draw's order, once drawn (nothing before): each entry's place, id, buyer's name,
-- sizes, units and ticket (the hash it was ordered by, in hex). Buyers by name only. Anyone can check
-- the order from this and the seed:
--     SELECT row_number() OVER (ORDER BY sha256(convert_to(s.seed, 'UTF8') || uuid_send(r.entry_id)),
--                               r.entry_id) AS place, r.username
--       FROM dropstock.draw_result('<drop id>') r, dropstock.draw_status('<drop id>') s;
CREATE FUNCTION draw_result(drop_id uuid)
RETURNS TABLE (place integer, entry_id uuid, username text, variants text[], quantity integer, ticket text)
LANGUAGE sql
STABLE
AS $$
    SELECT e.place, e.id, u.username, dropstock._variants_to_labels(e.drop_id, e.variants), e.quantity,
           encode(sha256(convert_to(w.seed, 'UTF8') || uuid_send(e.id)), 'hex')
      FROM dropstock.draws w
      JOIN dropstock.draw_entries e ON e.drop_id = w.drop_id
      JOIN dropstock.users u ON u.id = e.user_id
     WHERE w.drop_id = draw_result.drop_id
     ORDER BY e.place
$$;

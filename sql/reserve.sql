-- Holds: reserve_item for one buyer, reserve_items for many buyers of one drop in one transaction.
-- Both are thin wrappers around one core, _reserve, so a rule lives in one place.
-- Neither NOTIFYs: the background worker publishes stock changes (a notifying commit takes a global lock).

-- _reserve: the reservation core. For each distinct buyer, in array order, one answer row: the live
-- hold they already have (fresh = false), a new hold (fresh = true), or a refusal as a SQLSTATE and
-- message (DS002 unknown buyer, DS012 no size named on a sized drop, DS013 unknown size, DS021 limit
-- reached, DS020 sold out or others waiting for the size, DS022 cooling down, DS025 in the drop's
-- line). `labels` and `quantities` go with `user_ids` element by element (NULL: no size, one unit).
-- What concerns the whole drop (DS001 unknown, DS010 not started, DS011 ended, DS014 a draw not drawn
-- yet) is raised.
--
-- The steps, in the lock order of stock.sql:
--   1. the drop, read once (and a sized drop's labels);
--   2. the buyer locks, so each buyer's state below is what their last call committed;
--   3. each buyer's state: known, size, live hold, place in the drop's line, cooldown, units bought; a
--      buyer's own hold that ran out before a sweep saw it is ended here and its units kept for the
--      new holds of its variant. Nobody gets units others wait for (waitlist.sql): they are refused,
--      and a buyer whose hold ended while others waited is refused until the drop's cooldown has passed
--      (so nobody keeps a unit by reserving it again each time their hold runs out while others wait);
--   4. units for the buyers still waiting, one variant at a time in ascending order, first come first
--      served and all or nothing per buyer: the units in hand, then free stock (_claim_units), then
--      other buyers' past-due holds (_reclaim_due); units nobody could use go back (_give_back): to
--      the line first;
--   5. the new holds, inserted together.
CREATE FUNCTION _reserve(drop_id uuid, user_ids uuid[], labels text[], quantities integer[])
RETURNS TABLE (user_id uuid, reservation_id uuid, expires_at timestamptz, created_at timestamptz,
               fresh boolean, sqlstate text, message text, variant text, quantity integer,
               variant_number smallint, detail text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    d dropstock.drops;
    sizes text[];                            -- a sized drop's labels, element v for variant v
    buyer record;
    n integer := 0;                          -- distinct buyers seen so far
    uids uuid[] := '{}';                     -- per distinct buyer, in array order:
    hold_ids uuid[] := '{}';                 --   the live hold they keep, or NULL
    hold_expiries timestamptz[] := '{}';
    hold_times timestamptz[] := '{}';
    states text[] := '{}';                   --   the refusal's SQLSTATE, or NULL
    messages text[] := '{}';
    details text[] := '{}';                  --   the refusal's detail, or NULL
    answer_labels text[] := '{}';            --   the hold's size label, number and units
    answer_variants smallint[] := '{}';
    answer_units integer[] := '{}';
    waiting_at integer[] := '{}';            -- buyers who need units, in order: where each stands in uids,
    waiting_variant smallint[] := '{}';      --   the variant
    waiting_units integer[] := '{}';         --   and how many units
    -- Per variant, element v + 1 for variant v:
    wanted integer[] := '{}';                --   units the waiting buyers want
    in_hand integer[] := '{}';               --   units of buyers' own past-due holds, ended in step 3
    lapsed_buyers uuid[] := '{}';            -- those buyers
    busy_lines boolean[] := '{}';            --   whether anybody waits in the drop's line for it
    until timestamptz;
    granted integer;
    left_over integer;
    short_variant smallint;
    v smallint;
    g integer;
    granted_at integer[];                    -- the buyers who get a hold, in order (indexes into waiting_*)
    made_uids uuid[];
    made_ids uuid[];
    made_expiries timestamptz[];
    made_times timestamptz[];
    made_at integer;
    due_by timestamptz;        -- a variable, so the index on expires_at bounds the scan (see expiry.sql)
BEGIN
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = _reserve.drop_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', _reserve.drop_id USING ERRCODE = 'DS001';
    END IF;
    IF clock_timestamp() < d.starts_at THEN
        RAISE EXCEPTION 'drop "%" has not started yet', d.name USING ERRCODE = 'DS010',
              DETAIL = format('It opens at %s.', d.starts_at);
    END IF;
    IF d.mode = 'draw' THEN
        -- Before the draw its units are the entrants'; after it, what the draw left is first come,
        -- first served, its end being the end of entries.
        IF NOT EXISTS (SELECT FROM dropstock.draws w WHERE w.drop_id = d.id) THEN
            RAISE EXCEPTION 'drop "%" is a draw', d.name USING ERRCODE = 'DS014', HINT = 'Enter the draw.';
        END IF;
    ELSIF d.ends_at IS NOT NULL AND clock_timestamp() >= d.ends_at THEN
        RAISE EXCEPTION 'drop "%" has ended', d.name USING ERRCODE = 'DS011',
              DETAIL = format('It closed at %s.', d.ends_at);
    END IF;
    IF d.sized THEN
        sizes := ARRAY(SELECT x.label FROM dropstock.variants x WHERE x.drop_id = d.id AND x.variant > 0
                        ORDER BY x.variant);
    END IF;

    PERFORM dropstock._lock_buyers(d.id, _reserve.user_ids);

    -- One index probe per buyer and question, whatever the statistics say: scalar subqueries, and a
    -- LIMIT on the live-hold look-up so that it cannot be turned into a join over all the drop's live
    -- holds (a new install's plan did that: 1 ms a call with 3,000 holds).
    FOR buyer IN
        SELECT a.uid, _reserve.labels[a.pos] AS asked, coalesce(_reserve.quantities[a.pos], 1) AS units,
               EXISTS (SELECT FROM dropstock.users u WHERE u.id = a.uid) AS known,
               live.id AS live_id, live.expires_at AS live_expires_at, live.created_at AS live_created_at,
               live.variant AS live_variant, live.quantity AS live_units,
               (SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p
                 WHERE p.user_id = a.uid AND p.drop_id = d.id) AS bought,
               (SELECT w.place FROM dropstock.waitlist w WHERE w.drop_id = d.id AND w.user_id = a.uid) AS place,
               (SELECT c.until FROM dropstock.cooldowns c WHERE c.drop_id = d.id AND c.user_id = a.uid) AS cooling_until
          FROM (SELECT t.uid, min(t.pos)::integer AS pos
                  FROM unnest(_reserve.user_ids) WITH ORDINALITY AS t(uid, pos)
                 GROUP BY t.uid) a
          LEFT JOIN LATERAL (SELECT r.id, r.expires_at, r.created_at, r.variant, r.quantity
                               FROM dropstock.reservations r
                              WHERE r.drop_id = d.id AND r.user_id = a.uid AND r.status = 'reserved'
                              LIMIT 1) live ON true
         ORDER BY a.pos
    LOOP
        n := n + 1;
        -- Every array gets its element n, so that element i of each is buyer i's, for the answers at the end.
        uids[n] := buyer.uid;
        hold_ids[n] := NULL;
        hold_expiries[n] := NULL;
        hold_times[n] := NULL;
        states[n] := NULL;
        messages[n] := NULL;
        details[n] := NULL;
        answer_labels[n] := NULL;
        answer_variants[n] := NULL;
        answer_units[n] := buyer.units;
        IF NOT buyer.known THEN
            states[n] := 'DS002';
            messages[n] := format('user %s does not exist', buyer.uid);
            CONTINUE;
        END IF;
        IF d.sized THEN
            IF buyer.asked IS NULL THEN
                states[n] := 'DS012';
                messages[n] := format('choose a size of drop "%s"', d.name);
                CONTINUE;
            END IF;
            v := array_position(sizes, btrim(buyer.asked));
            IF v IS NULL THEN
                states[n] := 'DS013';
                messages[n] := format('drop "%s" has no size "%s"', d.name, buyer.asked);
                CONTINUE;
            END IF;
            answer_labels[n] := sizes[v];
        ELSIF buyer.asked IS NOT NULL THEN
            states[n] := 'DS013';
            messages[n] := format('drop "%s" has no sizes, so no size "%s"', d.name, buyer.asked);
            CONTINUE;
        ELSE
            v := 0;
        END IF;
        answer_variants[n] := v;
        IF buyer.live_id IS NOT NULL THEN
            IF buyer.live_expires_at > clock_timestamp() THEN
                -- The hold they have, whatever they asked for this time: one live hold per buyer and drop.
                hold_ids[n] := buyer.live_id;
                hold_expiries[n] := buyer.live_expires_at;
                hold_times[n] := buyer.live_created_at;
                answer_labels[n] := CASE WHEN d.sized THEN sizes[buyer.live_variant] END;
                answer_variants[n] := buyer.live_variant;
                answer_units[n] := buyer.live_units;
                CONTINUE;
            END IF;
        END IF;
        IF buyer.place IS NOT NULL THEN
            -- Their turn comes as an offer; reserving would jump the line they are in.
            states[n] := 'DS025';
            messages[n] := format('you are number %s in line for drop "%s": the units are offered to you when your turn comes',
                                  (SELECT count(*) FROM dropstock.waitlist w WHERE w.drop_id = d.id AND w.place <= buyer.place),
                                  d.name);
            CONTINUE;
        END IF;
        IF buyer.live_id IS NOT NULL THEN
            -- Their own hold ran out before a sweep saw it: end it; its units go back after the claims.
            UPDATE dropstock.reservations r SET status = 'expired'
             WHERE r.id = buyer.live_id AND r.status = 'reserved';
            IF FOUND THEN
                in_hand[buyer.live_variant + 1] := coalesce(in_hand[buyer.live_variant + 1], 0) + buyer.live_units;
                lapsed_buyers := lapsed_buyers || buyer.uid;
            ELSE
                -- The sweep ended it after this call first looked (the update waited for it): it may have
                -- given the units to the line and started this buyer's cooldown since.
                buyer.cooling_until := (SELECT c.until FROM dropstock.cooldowns c
                                         WHERE c.drop_id = d.id AND c.user_id = buyer.uid);
            END IF;
        END IF;
        IF busy_lines[v + 1] IS NULL THEN
            busy_lines[v + 1] := dropstock._line_waits(d.id, v);
        END IF;
        -- A buyer whose hold ended while others waited cools down for the drop's cooldown, whether or
        -- not anybody still waits: their hold running out now, while others wait, starts one.
        until := buyer.cooling_until;
        IF busy_lines[v + 1] AND buyer.live_id IS NOT NULL AND buyer.live_expires_at <= clock_timestamp() THEN
            until := greatest(until, buyer.live_expires_at + make_interval(secs => coalesce(d.cooldown_seconds, d.hold_seconds)));
            INSERT INTO dropstock.cooldowns AS c (drop_id, user_id, until)
            VALUES (d.id, buyer.uid, until)
            ON CONFLICT ON CONSTRAINT cooldowns_pkey DO UPDATE SET until = greatest(c.until, excluded.until);
        END IF;
        IF until > clock_timestamp() THEN
            states[n] := 'DS022';
            messages[n] := format('your hold on drop "%s" ended while others were waiting: you may reserve it again from %s',
                                  d.name, until);
            details[n] := until::text;
            CONTINUE;
        END IF;
        IF busy_lines[v + 1] THEN
            states[n] := 'DS020';
            messages[n] := CASE WHEN NOT d.sized THEN format('buyers are waiting for drop "%s": join the waiting list', d.name)
                                ELSE format('buyers are waiting for size "%s" of drop "%s": join the waiting list', sizes[v], d.name) END;
            CONTINUE;
        END IF;
        -- The limit counts units of live holds and purchases; the buyer holds no live hold at this point.
        IF buyer.bought + buyer.units > d.per_user_limit THEN
            states[n] := 'DS021';
            messages[n] := CASE WHEN buyer.bought >= d.per_user_limit
                                THEN format('limit of %s per buyer reached for drop "%s"', d.per_user_limit, d.name)
                                ELSE format('limit of %s per buyer for drop "%s": %s more at most, not %s',
                                            d.per_user_limit, d.name, d.per_user_limit - buyer.bought, buyer.units) END;
            CONTINUE;
        END IF;
        waiting_at := waiting_at || n;
        waiting_variant := waiting_variant || v;
        waiting_units := waiting_units || buyer.units;
        wanted[v + 1] := coalesce(wanted[v + 1], 0) + buyer.units;
    END LOOP;

    -- Units per variant, in ascending variant order, then handed out in buyer order. Past-due holds that
    -- another transaction is deciding right now (the sweep giving their units back, a cancel, a purchase
    -- being refused) are skipped by the reclaim; while any are left, their units are on their way back
    -- to stock and "sold out" would be false. Then every claim is undone (a batch may hold slots, and
    -- the sweep may be waiting for one to put the units back), the call waits for those transactions
    -- to end, holding nothing of the drop, and claims again. Each round waits for others to finish, so
    -- the rounds end.
    FOR round IN 1..5 LOOP
        BEGIN
            granted_at := '{}';
            -- Arrays filled at element v + 1 start where they were first filled: loop over subscripts, up to the highest.
            FOR k IN 1 .. coalesce(greatest(array_upper(wanted, 1), array_upper(in_hand, 1)), 0) LOOP
                CONTINUE WHEN coalesce(wanted[k], 0) = 0 AND coalesce(in_hand[k], 0) = 0;
                v := k - 1;
                short_variant := NULL;
                -- The units in hand first (own past-due holds, ended in step 3), then claimed ones.
                granted := coalesce(in_hand[k], 0);
                IF granted < coalesce(wanted[k], 0) THEN
                    granted := granted + dropstock._claim_units(d.id, v, wanted[k] - granted);
                    IF granted < wanted[k] THEN
                        BEGIN
                            granted := granted + dropstock._reclaim_due(d.id, v, wanted[k] - granted);
                        EXCEPTION WHEN lock_not_available THEN
                            NULL;  -- see _reclaim_due
                        END;
                    END IF;
                END IF;
                -- All or nothing per buyer, first come first served.
                left_over := granted;
                FOR i IN 1 .. coalesce(cardinality(waiting_at), 0) LOOP
                    CONTINUE WHEN waiting_variant[i] <> v;
                    IF waiting_units[i] <= left_over THEN
                        granted_at := granted_at || i;
                        left_over := left_over - waiting_units[i];
                    ELSE
                        short_variant := v;
                        states[waiting_at[i]] := 'DS020';
                        messages[waiting_at[i]] :=
                            CASE WHEN left_over = 0 AND NOT d.sized THEN format('drop "%s" is sold out', d.name)
                                 WHEN left_over = 0 THEN format('size "%s" of drop "%s" is sold out', sizes[v], d.name)
                                 WHEN NOT d.sized THEN format('only %s left of drop "%s", not %s', left_over, d.name, waiting_units[i])
                                 ELSE format('only %s left of size "%s" of drop "%s", not %s',
                                             left_over, sizes[v], d.name, waiting_units[i]) END;
                    END IF;
                END LOOP;
                -- Units nobody here could use, claimed or in hand, to the line or to stock.
                IF left_over > 0 THEN
                    PERFORM dropstock._give_back(d.id, v, left_over, lapsed_buyers);
                END IF;
                due_by := clock_timestamp();
                IF short_variant IS NOT NULL AND round < 5
                   AND EXISTS (SELECT FROM dropstock.reservations r
                                WHERE r.drop_id = d.id AND r.status = 'reserved' AND r.expires_at <= due_by
                                  AND r.variant = short_variant) THEN
                    RAISE EXCEPTION 'units on their way back' USING ERRCODE = 'DS9WT';
                END IF;
            END LOOP;
            EXIT;
        EXCEPTION WHEN SQLSTATE 'DS9WT' THEN
            FOR i IN 1 .. coalesce(cardinality(waiting_at), 0) LOOP
                states[waiting_at[i]] := NULL;
                messages[waiting_at[i]] := NULL;
            END LOOP;
            PERFORM FROM dropstock.reservations r
             WHERE r.drop_id = d.id AND r.status = 'reserved' AND r.expires_at <= due_by
               AND r.variant = short_variant
             ORDER BY r.expires_at
               FOR UPDATE;
        END;
    END LOOP;

    IF cardinality(granted_at) > 0 THEN
        PERFORM dropstock._tell_worker_at_commit(d.id, made_holds => true);  -- the feed shows it within milliseconds (extension/src/wake.rs)
        -- The buyer locks make a conflict here impossible through the API; ON CONFLICT keeps a hold
        -- made behind the API's back from turning into an error for the whole batch.
        WITH made AS (
            INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at, variant, quantity)
            SELECT d.id, uids[waiting_at[g]], clock_timestamp() + make_interval(secs => d.hold_seconds),
                   waiting_variant[g], waiting_units[g]
              FROM unnest(granted_at) AS x(g)
             ORDER BY x.g  -- buyer order, which the answers below rely on
            ON CONFLICT (drop_id, user_id) WHERE status = 'reserved' DO NOTHING  -- columns: use_column above
            RETURNING r.user_id, r.id, r.expires_at, r.created_at
        )
        SELECT array_agg(m.user_id), array_agg(m.id), array_agg(m.expires_at), array_agg(m.created_at)
          INTO made_uids, made_ids, made_expiries, made_times
          FROM made m;
        IF coalesce(cardinality(made_uids), 0) < cardinality(granted_at) THEN
            FOR g IN SELECT x.g FROM unnest(granted_at) AS x(g) ORDER BY waiting_variant[x.g] LOOP
                IF made_uids IS NULL OR NOT uids[waiting_at[g]] = ANY (made_uids) THEN
                    PERFORM dropstock._adjust_stock(d.id, waiting_variant[g], waiting_units[g], 0);
                    states[waiting_at[g]] := '40001';
                    messages[waiting_at[g]] := 'a hold for this buyer was made outside dropstock''s functions';
                END IF;
            END LOOP;
        END IF;
    END IF;

    -- The answers, in array order. The winners' new holds came back from the INSERT in the order they
    -- went in, so each is found without a search (a hold made behind the API's back would shift them).
    made_at := 1;
    FOR i IN 1 .. n LOOP
        user_id := uids[i];
        sqlstate := states[i];
        message := messages[i];
        detail := details[i];
        variant := answer_labels[i];
        quantity := answer_units[i];
        variant_number := answer_variants[i];
        IF states[i] IS NULL AND hold_ids[i] IS NULL THEN
            IF made_uids[made_at] IS DISTINCT FROM uids[i] THEN
                made_at := array_position(made_uids, uids[i]);
            END IF;
            reservation_id := made_ids[made_at];
            expires_at := made_expiries[made_at];
            created_at := made_times[made_at];
            fresh := true;
            made_at := made_at + 1;
        ELSE
            reservation_id := hold_ids[i];
            expires_at := hold_expiries[i];
            created_at := hold_times[i];
            fresh := CASE WHEN hold_ids[i] IS NOT NULL THEN false END;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- reserve_item: hold `quantity` units of a drop (of the size `variant` on a sized drop) for the drop's
-- hold_seconds, by the database clock, all or none. A buyer who already holds a live hold on the drop
-- gets that same hold back, whatever size and quantity they ask for now, so client retries are safe.
-- Refusals: DS001 unknown drop, DS002 unknown buyer, DS010 not started, DS011 ended, DS012 no size named
-- on a sized drop, DS013 no such size, DS014 a draw not drawn yet, DS021 per-user limit reached (units
-- of holds and purchases, across sizes), DS020 sold out (or fewer units left than asked, or buyers
-- waiting in the drop's line for that size), DS022 the buyer's hold ended while others waited and the
-- drop's cooldown has not passed, DS025 the buyer is in the drop's line; 22023 for a missing argument
-- or a quantity outside 1..10000.
CREATE FUNCTION reserve_item(drop_id uuid, user_id uuid, variant text DEFAULT NULL, quantity integer DEFAULT 1)
RETURNS reservations
LANGUAGE plpgsql
AS $$
BEGIN
    -- The common case (a new hold from free units) by index probes and single-row writes, with no
    -- statement (_reserve_fast); anything else, refusals included, by the full rules (_reserve_item),
    -- which raise with their own SQLSTATE.
    RETURN coalesce(dropstock._reserve_fast(drop_id, user_id, variant, quantity),
                    dropstock._reserve_item(drop_id, user_id, variant, quantity));
END
$$;

-- _reserve_fast: reserve_item when nothing stands in the way of a new hold and one slot has the units
-- free: the new hold, or NULL having changed nothing (extension/src/reserve/fast_path.rs says how).
CREATE FUNCTION _reserve_fast(drop_id uuid, user_id uuid, variant text, quantity integer)
RETURNS reservations
LANGUAGE c
VOLATILE
AS 'MODULE_PATHNAME', 'reserve_fast';

-- _reserve_item: reserve_item by the full rules, through _reserve.
CREATE FUNCTION _reserve_item(drop_id uuid, user_id uuid, variant text, quantity integer)
RETURNS reservations
LANGUAGE plpgsql
AS $$
DECLARE
    answer record;
BEGIN
    IF _reserve_item.drop_id IS NULL OR _reserve_item.user_id IS NULL THEN
        RAISE EXCEPTION 'drop id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF _reserve_item.quantity IS NULL OR _reserve_item.quantity < 1 OR _reserve_item.quantity > 10000 THEN
        RAISE EXCEPTION 'quantity must be from 1 to 10000, got %', coalesce(_reserve_item.quantity::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO answer
      FROM dropstock._reserve(_reserve_item.drop_id, ARRAY[_reserve_item.user_id], ARRAY[_reserve_item.variant],
                              ARRAY[_reserve_item.quantity]);
    IF answer.detail IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = answer.sqlstate, MESSAGE = answer.message, DETAIL = answer.detail;
    ELSIF answer.sqlstate IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = answer.sqlstate, MESSAGE = answer.message;
    END IF;
    IF NOT answer.fresh THEN
        -- A retry: the hold as it stands (it may have been extended), read again.
        RETURN (SELECT r FROM dropstock.reservations r WHERE r.id = answer.reservation_id);
    END IF;
    RETURN ROW(answer.reservation_id, _reserve_item.drop_id, _reserve_item.user_id, 'reserved',
               answer.expires_at, answer.created_at, answer.variant_number, answer.quantity, 0, false)::dropstock.reservations;
END
$$;

-- _reserve_many_fast: reserve_items' common case, decided for the whole batch in a few set-based
-- statements: every buyer named once, known, new to the drop (no live hold), not cooling down and within
-- the limit, every size named one the drop has, nobody in the drop's line, and each size's units free in
-- slots nobody is committing on. Returns reserve_items' answer (a new hold per buyer, in array order);
-- or no row, having changed nothing, and _reserve decides with the full rules. The same lock order:
-- the buyer locks, then each size's slots in ascending order, through _claim_free's first pass under
-- its short lock_timeout, in a subtransaction that is undone when any size comes up short.
CREATE FUNCTION _reserve_many_fast(drop_id uuid, user_ids uuid[], variants text[], quantities integer[])
RETURNS TABLE (user_id uuid, reservation_id uuid, expires_at timestamptz, created_at timestamptz,
               fresh boolean, sqlstate text, message text, variant text, quantity integer)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    d dropstock.drops;
    buyers uuid[];                           -- per buyer, in array order:
    numbers smallint[];                      --   the variant
    units integer[];                         --   the units
    all_clear boolean;
    need record;
    previous_timeout text;
    made_ids uuid[];
    made_expiries timestamptz[];
    made_times timestamptz[];
BEGIN
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = _reserve_many_fast.drop_id;
    IF NOT FOUND OR d.mode <> 'race' OR clock_timestamp() < d.starts_at
       OR (d.ends_at IS NOT NULL AND clock_timestamp() >= d.ends_at) THEN
        RETURN;
    END IF;
    PERFORM dropstock._lock_buyers(d.id, _reserve_many_fast.user_ids);
    IF EXISTS (SELECT FROM dropstock.waitlist l WHERE l.drop_id = d.id) THEN
        RETURN;
    END IF;
    SELECT array_agg(a.uid ORDER BY a.pos), array_agg(a.v ORDER BY a.pos), array_agg(a.q ORDER BY a.pos),
           coalesce(bool_and(a.v IS NOT NULL AND a.clear), false) AND count(DISTINCT a.uid) = count(*)
      INTO buyers, numbers, units, all_clear
      FROM (SELECT t.uid, t.pos, coalesce(t.q, 1) AS q,
                   CASE WHEN t.label IS NULL THEN CASE WHEN NOT d.sized THEN 0::smallint END
                        WHEN d.sized THEN (SELECT z.variant FROM dropstock.variants z
                                            WHERE z.drop_id = d.id AND z.label = btrim(t.label) AND z.variant > 0)
                   END AS v,
                   -- Scalar subqueries with LIMIT 1, one index probe per buyer each: as EXISTS, the
                   -- planner may hash the subquery instead, reading every live hold of the drop per call.
                   (SELECT true FROM dropstock.users u WHERE u.id = t.uid LIMIT 1) IS NOT NULL
                   AND (SELECT true FROM dropstock.reservations r
                         WHERE r.drop_id = d.id AND r.user_id = t.uid AND r.status = 'reserved' LIMIT 1) IS NULL
                   AND (SELECT true FROM dropstock.cooldowns c
                         WHERE c.drop_id = d.id AND c.user_id = t.uid AND c.until > clock_timestamp() LIMIT 1) IS NULL
                   AND (SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p
                         WHERE p.user_id = t.uid AND p.drop_id = d.id) + coalesce(t.q, 1) <= d.per_user_limit
                   AS clear
              FROM unnest(_reserve_many_fast.user_ids, _reserve_many_fast.variants, _reserve_many_fast.quantities)
                   WITH ORDINALITY AS t(uid, label, q, pos)) a;
    IF NOT coalesce(all_clear, false) THEN
        RETURN;
    END IF;
    previous_timeout := current_setting('lock_timeout');
    BEGIN
        PERFORM set_config('lock_timeout', '20ms', true);
        FOR need IN SELECT n.v, sum(n.q)::integer AS wanted FROM unnest(numbers, units) AS n(v, q)
                     GROUP BY n.v ORDER BY n.v LOOP
            IF dropstock._claim_free(d.id, need.v, need.wanted) < need.wanted THEN
                RAISE EXCEPTION 'short' USING ERRCODE = 'DS9RT';  -- undo the claims, let their slots go
            END IF;
        END LOOP;
        PERFORM set_config('lock_timeout', previous_timeout, true);
        -- The buyer locks make a conflict impossible through the API; a hold made behind its back sends
        -- the batch to the full rules, which answer that buyer alone.
        WITH made AS (
            INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at, variant, quantity)
            SELECT d.id, b.uid, clock_timestamp() + make_interval(secs => d.hold_seconds), b.v, b.q
              FROM unnest(buyers, numbers, units) AS b(uid, v, q)
            ON CONFLICT (drop_id, user_id) WHERE status = 'reserved' DO NOTHING
            RETURNING r.user_id, r.id, r.expires_at, r.created_at
        )
        SELECT array_agg(m.id ORDER BY b.pos), array_agg(m.expires_at ORDER BY b.pos),
               array_agg(m.created_at ORDER BY b.pos)
          INTO made_ids, made_expiries, made_times
          FROM unnest(buyers) WITH ORDINALITY AS b(uid, pos) JOIN made m ON m.user_id = b.uid;
        IF coalesce(cardinality(made_ids), 0) < cardinality(buyers) THEN
            RAISE EXCEPTION 'taken' USING ERRCODE = 'DS9RT';
        END IF;
    EXCEPTION WHEN SQLSTATE 'DS9RT' OR lock_not_available THEN
        RETURN;
    END;
    PERFORM dropstock._tell_worker_at_commit(d.id, made_holds => true);  -- the feed shows it within milliseconds (extension/src/wake.rs)
    RETURN QUERY
        SELECT b.uid, made_ids[b.pos], made_expiries[b.pos], made_times[b.pos], true, NULL::text, NULL::text,
               CASE WHEN d.sized THEN (SELECT z.label FROM dropstock.variants z
                                        WHERE z.drop_id = d.id AND z.variant = b.v) END,
               b.q
          FROM unnest(buyers, numbers, units) WITH ORDINALITY AS b(uid, v, q, pos)
         ORDER BY b.pos;
END
$$;

-- reserve_items: reserve_item for many buyers of one drop in one transaction, so that one commit (one
-- disk flush) serves them all. `variants` and `quantities`, when given, go with `user_ids` element by
-- element (a NULL size: none named; NULL arrays: no sizes, one unit each). Each buyer gets exactly the
-- answer reserve_item would have given them, as one row, in the order the buyers are named: the live
-- hold they already have (fresh = false), a new hold (fresh = true), or a refusal as a SQLSTATE and
-- message (DS002, DS012, DS013, DS021, DS020), with the hold's size label and units. Units go to the
-- buyers in array order; a buyer named twice gets one row (for the first naming).
-- What concerns the whole drop (DS001, DS010, DS011) and bad arguments (22023) are raised, as
-- reserve_item raises them. Two calls naming the same buyers in any order never deadlock: buyer locks
-- are taken in one order, whatever the array's, and slots variant by variant in ascending order.
CREATE FUNCTION reserve_items(drop_id uuid, user_ids uuid[], variants text[] DEFAULT NULL,
                              quantities integer[] DEFAULT NULL)
RETURNS TABLE (user_id uuid, reservation_id uuid, expires_at timestamptz, created_at timestamptz,
               fresh boolean, sqlstate text, message text, variant text, quantity integer)
LANGUAGE plpgsql
AS $$
BEGIN
    IF reserve_items.drop_id IS NULL OR reserve_items.user_ids IS NULL
       OR array_position(reserve_items.user_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'drop id and user ids are required, and no user id may be NULL'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(reserve_items.user_ids) > 10000 THEN
        RAISE EXCEPTION 'at most 10000 buyers per call, got %', cardinality(reserve_items.user_ids)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(reserve_items.variants) <> cardinality(reserve_items.user_ids)
       OR cardinality(reserve_items.quantities) <> cardinality(reserve_items.user_ids) THEN
        RAISE EXCEPTION 'variants and quantities must have one element per user id'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM unnest(reserve_items.quantities) AS q WHERE q IS NULL OR q < 1 OR q > 10000) THEN
        RAISE EXCEPTION 'every quantity must be from 1 to 10000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The common batch (every buyer new, the units free) in a few set-based statements; anything else
    -- by the full rules.
    RETURN QUERY SELECT * FROM dropstock._reserve_many_fast(reserve_items.drop_id, reserve_items.user_ids,
                                                            reserve_items.variants, reserve_items.quantities);
    IF FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT r.user_id, r.reservation_id, r.expires_at, r.created_at, r.fresh, r.sqlstate,
                        r.message, r.variant, r.quantity
                   FROM dropstock._reserve(reserve_items.drop_id, reserve_items.user_ids,
                                           reserve_items.variants, reserve_items.quantities) r;
END
$$;

-- take_batch_turn: wait for one of a drop's `turns` batch turns and keep it until the end of the
-- transaction; returns the turn taken. A caller that batches reservations (the HTTP adapter: every
-- reserve_items call it makes) begins a transaction, takes a turn, and only then gathers the buyers
-- waiting for the drop into its reserve_items call, before it commits. So at most `turns` batches of
-- one drop run in the database at once, however many callers send them: more of them at once only
-- split the same buyers into smaller calls that wait on each other's slots (in `make bench`, 4
-- adapters with 4 calls in flight each made 0.59x the holds of one adapter; sharing 4 turns, 0.81x). A
-- caller waiting for a turn holds no other lock, so no lock order can deadlock on it. `turn` is the
-- one to wait for if every turn is taken; a free one is taken first. With `wait` false it never
-- waits: NULL when every turn is taken, so a caller that already holds one of the drop's turns in
-- another transaction can leave its buyers to that batch instead of waiting beside it. The lock is
-- transaction-level advisory on (hash of the drop, turn), in the two-key space no other lock of the
-- extension uses.
CREATE FUNCTION take_batch_turn(drop_id uuid, turn integer, turns integer, wait boolean DEFAULT true)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    key constant integer := pg_catalog.uuid_hash(take_batch_turn.drop_id);
    other integer;
BEGIN
    IF take_batch_turn.drop_id IS NULL OR turns IS NULL OR turns NOT BETWEEN 1 AND 64
       OR turn IS NULL OR turn NOT BETWEEN 0 AND turns - 1 OR wait IS NULL THEN
        RAISE EXCEPTION 'a drop id, turns from 1 to 64, a turn from 0 to turns - 1 and wait are required'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR step IN 0 .. turns - 1 LOOP
        other := (turn + step) % turns;
        IF pg_catalog.pg_try_advisory_xact_lock(key, other) THEN
            RETURN other;
        END IF;
    END LOOP;
    IF NOT wait THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(key, turn);
    RETURN turn;
END
$$;

-- share_batch_turns: how many of a drop's `turns` batch turns `caller` should keep in use: the turns
-- divided among the callers that batch the drop, rounded up, so at least one. A caller that batches
-- (each HTTP adapter, under an id of its own) calls it about once a second while it batches the drop;
-- a caller counts for 3 seconds after its last call, so one that stopped or died leaves its share to
-- the others within that. Why: two adapters each running as many batches as one adapter alone needs
-- (four) made 0.95x the holds of one adapter, and four made 0.90x; each running its share, 1.00x and
-- 0.92x in the same runs. No caller can tell that it is one of several; the database sees them all.
-- Refusals: DS001 unknown drop; 22023 for a missing argument or turns outside 1 to 64.
CREATE FUNCTION share_batch_turns(drop_id uuid, caller uuid, turns integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    -- Three calls' worth, so a caller that is late once still counts.
    share_window constant interval := interval '3 seconds';
    callers integer;
BEGIN
    IF share_batch_turns.drop_id IS NULL OR share_batch_turns.caller IS NULL OR turns IS NULL
       OR turns NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'a drop id, a caller and turns from 1 to 64 are required'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM dropstock.drops d WHERE d.id = share_batch_turns.drop_id) THEN
        RAISE EXCEPTION 'drop % does not exist', share_batch_turns.drop_id USING ERRCODE = 'DS001';
    END IF;
    INSERT INTO dropstock.batch_callers AS b (drop_id, caller, seen_at)
         VALUES (share_batch_turns.drop_id, share_batch_turns.caller, now())
    ON CONFLICT ON CONSTRAINT batch_callers_pkey DO UPDATE SET seen_at = excluded.seen_at;
    -- Callers long gone, skipping any row another call is writing: two callers clearing each other's
    -- rows while writing their own could otherwise wait on each other.
    DELETE FROM dropstock.batch_callers b
     WHERE (b.drop_id, b.caller) IN (SELECT o.drop_id, o.caller FROM dropstock.batch_callers o
                                      WHERE o.drop_id = share_batch_turns.drop_id
                                        AND o.seen_at < now() - interval '1 minute'
                                        FOR UPDATE SKIP LOCKED);
    SELECT count(*) INTO callers FROM dropstock.batch_callers b
     WHERE b.drop_id = share_batch_turns.drop_id AND b.seen_at > now() - share_window;
    RETURN (turns + callers - 1) / callers;
END
$$;

-- extend_hold: give the buyer's live hold the drop's hold_seconds more, from its current expiry, at most
-- max_extensions times per hold. Refusals: DS003 unknown reservation, DS031 another buyer's hold,
-- DS030 hold expired (by the database clock), DS032 cancelled, DS033 purchased, DS034 no (more)
-- extensions allowed on this drop; 22023 for a missing argument.
CREATE FUNCTION extend_hold(reservation_id uuid, user_id uuid)
RETURNS reservations
LANGUAGE plpgsql
AS $$
DECLARE
    hold dropstock.reservations;
    d dropstock.drops;
BEGIN
    IF extend_hold.reservation_id IS NULL OR extend_hold.user_id IS NULL THEN
        RAISE EXCEPTION 'reservation id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The buyer lock and the row lock, as purchase and cancel take them: a sweep or a reclaim either
    -- ended the hold before (the status says so) or skips it until this commits.
    hold := dropstock._lock_hold(extend_hold.reservation_id, extend_hold.user_id);
    IF hold.status = 'purchased' THEN
        RAISE EXCEPTION 'reservation % is already purchased', hold.id USING ERRCODE = 'DS033';
    ELSIF hold.status = 'cancelled' THEN
        RAISE EXCEPTION 'reservation % was cancelled', hold.id USING ERRCODE = 'DS032';
    ELSIF hold.status = 'expired' OR hold.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'reservation % expired', hold.id USING ERRCODE = 'DS030',
              DETAIL = format('The hold ran out at %s.', hold.expires_at), HINT = 'Reserve the item again.';
    END IF;
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = hold.drop_id;
    IF hold.extensions >= d.max_extensions THEN
        RAISE EXCEPTION '%', CASE WHEN d.max_extensions = 0
                                  THEN format('holds on drop "%s" cannot be extended', d.name)
                                  ELSE format('reservation %s was already extended %s times, the most drop "%s" allows',
                                              hold.id, hold.extensions, d.name) END
              USING ERRCODE = 'DS034';
    END IF;
    UPDATE dropstock.reservations r
       SET expires_at = r.expires_at + make_interval(secs => d.hold_seconds), extensions = r.extensions + 1
     WHERE r.id = hold.id
    RETURNING r.* INTO hold;
    RETURN hold;
END
$$;

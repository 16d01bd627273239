-- Holds: reserve_item for one buyer, reserve_items for many buyers of one drop in one transaction.
-- Both are thin wrappers around one core, _reserve, so a rule lives in one place.
-- Neither NOTIFYs: the background worker publishes stock changes (a notifying commit takes a global lock).

-- _reserve: the reservation core. For each distinct buyer, in array order, one answer row: the live
-- hold they already have (fresh = false), a new hold (fresh = true), or a refusal as a SQLSTATE and
-- message (DS002 unknown buyer, DS021 limit reached, DS020 sold out). What concerns the whole drop
-- (DS001 unknown, DS010 not started, DS011 ended) is raised.
--
-- The steps, in the lock order of stock.sql:
--   1. the drop, read once;
--   2. the buyer locks, so each buyer's state below is what their last call committed;
--   3. each buyer's state: known, live hold, purchases; a buyer's own hold that ran out before a sweep
--      saw it is ended here and its unit kept for the new holds;
--   4. units for the buyers still waiting, first come first served: the units in hand, then free
--      stock (_claim_units), then other buyers' past-due holds (_reclaim_due);
--   5. the new holds, inserted together.
CREATE FUNCTION _reserve(drop_id uuid, user_ids uuid[])
RETURNS TABLE (user_id uuid, reservation_id uuid, expires_at timestamptz, created_at timestamptz,
               fresh boolean, sqlstate text, message text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    d dropstock.drops;
    buyer record;
    n integer := 0;                          -- distinct buyers seen so far
    uids uuid[] := '{}';                     -- per distinct buyer, in array order:
    hold_ids uuid[] := '{}';                 --   the live hold they keep, or NULL
    hold_expiries timestamptz[] := '{}';
    hold_times timestamptz[] := '{}';
    states text[] := '{}';                   --   the refusal's SQLSTATE, or NULL
    messages text[] := '{}';
    waiting uuid[] := '{}';                  -- buyers who need a unit, in order
    waiting_at integer[] := '{}';            -- and where each stands in uids
    in_hand integer := 0;                    -- units of buyers' own past-due holds, ended in step 3
    wanted integer;
    granted integer;
    sold_out_message text;
    made_uids uuid[];
    made_ids uuid[];
    made_expiries timestamptz[];
    made_times timestamptz[];
    made_at integer;
    from_hand integer;
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
    IF d.ends_at IS NOT NULL AND clock_timestamp() >= d.ends_at THEN
        RAISE EXCEPTION 'drop "%" has ended', d.name USING ERRCODE = 'DS011',
              DETAIL = format('It closed at %s.', d.ends_at);
    END IF;

    PERFORM dropstock._lock_buyers(d.id, _reserve.user_ids);

    -- One index probe per buyer and question, whatever the statistics say: scalar subqueries, and a
    -- LIMIT on the live-hold look-up so that it cannot be turned into a join over all the drop's live
    -- holds (a new install's plan did that: 1 ms a call with 3,000 holds).
    FOR buyer IN
        SELECT a.uid,
               EXISTS (SELECT FROM dropstock.users u WHERE u.id = a.uid) AS known,
               live.id AS live_id, live.expires_at AS live_expires_at, live.created_at AS live_created_at,
               (SELECT count(*) FROM dropstock.purchases p WHERE p.user_id = a.uid AND p.drop_id = d.id) AS bought
          FROM (SELECT t.uid, min(t.pos) AS pos FROM unnest(_reserve.user_ids) WITH ORDINALITY AS t(uid, pos)
                 GROUP BY t.uid) a
          LEFT JOIN LATERAL (SELECT r.id, r.expires_at, r.created_at FROM dropstock.reservations r
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
        IF NOT buyer.known THEN
            states[n] := 'DS002';
            messages[n] := format('user %s does not exist', buyer.uid);
            CONTINUE;
        END IF;
        IF buyer.live_id IS NOT NULL THEN
            IF buyer.live_expires_at > clock_timestamp() THEN
                hold_ids[n] := buyer.live_id;
                hold_expiries[n] := buyer.live_expires_at;
                hold_times[n] := buyer.live_created_at;
                CONTINUE;
            END IF;
            -- Their own hold ran out before a sweep saw it: end it; its unit goes to a new hold.
            UPDATE dropstock.reservations r SET status = 'expired'
             WHERE r.id = buyer.live_id AND r.status = 'reserved';
            IF FOUND THEN
                in_hand := in_hand + 1;
            END IF;
        END IF;
        -- The limit counts live holds and purchases; the buyer holds no live hold at this point.
        IF buyer.bought >= d.per_user_limit THEN
            states[n] := 'DS021';
            messages[n] := format('limit of %s per buyer reached for drop "%s"', d.per_user_limit, d.name);
            CONTINUE;
        END IF;
        waiting := waiting || buyer.uid;
        waiting_at := waiting_at || n;
    END LOOP;

    wanted := cardinality(waiting);
    granted := least(in_hand, wanted);
    IF in_hand > granted THEN
        -- More of their own units came back than buyers want (a limit lowered since): free the rest.
        PERFORM dropstock._adjust_stock(d.id, in_hand - granted, 0);
    END IF;
    from_hand := granted;
    -- Units from stock, then from other buyers' past-due holds. Past-due holds that another transaction
    -- is deciding right now (the sweep giving their units back, a cancel, a purchase being refused)
    -- are skipped by the reclaim; while any are left, their units are on their way back to stock and
    -- "sold out" would be false. Then the claim is undone (a batch may hold slots, and the sweep may be
    -- waiting for one to put the units back), the call waits for those transactions to end, holding
    -- nothing of the drop, and claims again. Each round waits for others to finish, so the rounds end.
    FOR round IN 1..5 LOOP
        BEGIN
            granted := from_hand + dropstock._claim_units(d.id, wanted - from_hand);
            IF granted < wanted THEN
                BEGIN
                    granted := granted + dropstock._reclaim_due(d.id, wanted - granted);
                EXCEPTION WHEN lock_not_available THEN
                    NULL;  -- see _reclaim_due
                END;
            END IF;
            due_by := clock_timestamp();
            IF granted < wanted AND round < 5
               AND EXISTS (SELECT FROM dropstock.reservations r
                            WHERE r.drop_id = d.id AND r.status = 'reserved' AND r.expires_at <= due_by) THEN
                RAISE EXCEPTION 'units on their way back' USING ERRCODE = 'DS9WT';
            END IF;
            EXIT;
        EXCEPTION WHEN SQLSTATE 'DS9WT' THEN
            PERFORM FROM dropstock.reservations r
             WHERE r.drop_id = d.id AND r.status = 'reserved' AND r.expires_at <= due_by
             ORDER BY r.expires_at
               FOR UPDATE;
        END;
    END LOOP;

    IF granted < wanted THEN
        sold_out_message := format('drop "%s" is sold out', d.name);
        FOR i IN granted + 1 .. wanted LOOP
            states[waiting_at[i]] := 'DS020';
            messages[waiting_at[i]] := sold_out_message;
        END LOOP;
    END IF;

    IF granted > 0 THEN
        -- The buyer locks make a conflict here impossible through the API; ON CONFLICT keeps a hold
        -- made behind the API's back from turning into an error for the whole batch.
        WITH made AS (
            INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at)
            SELECT d.id, w, clock_timestamp() + make_interval(secs => d.hold_seconds)
              FROM unnest(waiting[1:granted]) AS w
            ON CONFLICT (drop_id, user_id) WHERE status = 'reserved' DO NOTHING  -- columns: use_column above
            RETURNING r.user_id, r.id, r.expires_at, r.created_at
        )
        SELECT array_agg(m.user_id), array_agg(m.id), array_agg(m.expires_at), array_agg(m.created_at)
          INTO made_uids, made_ids, made_expiries, made_times
          FROM made m;
        IF coalesce(cardinality(made_uids), 0) < granted THEN
            PERFORM dropstock._adjust_stock(d.id, granted - coalesce(cardinality(made_uids), 0), 0);
            FOR i IN 1 .. granted LOOP
                IF made_uids IS NULL OR NOT waiting[i] = ANY (made_uids) THEN
                    states[waiting_at[i]] := '40001';
                    messages[waiting_at[i]] := 'a hold for this buyer was made outside dropstock''s functions';
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

-- reserve_item: hold one unit of a drop for the drop's hold_seconds, by the database clock.
-- A buyer who already holds a live hold on the drop gets that same hold back, so client retries are
-- safe. Refusals: DS001 unknown drop, DS002 unknown buyer, DS010 not started, DS011 ended,
-- DS021 per-user limit reached, DS020 sold out; 22023 for a missing argument.
CREATE FUNCTION reserve_item(drop_id uuid, user_id uuid)
RETURNS reservations
LANGUAGE plpgsql
AS $$
DECLARE
    answer record;
BEGIN
    IF reserve_item.drop_id IS NULL OR reserve_item.user_id IS NULL THEN
        RAISE EXCEPTION 'drop id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO answer FROM dropstock._reserve(reserve_item.drop_id, ARRAY[reserve_item.user_id]);
    IF answer.sqlstate IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = answer.sqlstate, MESSAGE = answer.message;
    END IF;
    RETURN ROW(answer.reservation_id, reserve_item.drop_id, reserve_item.user_id, 'reserved',
               answer.expires_at, answer.created_at)::dropstock.reservations;
END
$$;

-- reserve_items: reserve_item for many buyers of one drop in one transaction, so that one commit (one
-- disk flush) serves them all. Each buyer gets exactly the answer reserve_item would have given them, as
-- one row, in the order the buyers are named: the live hold they already have (fresh = false), a new
-- hold (fresh = true), or a refusal as a SQLSTATE and message (DS002 unknown buyer, DS021 limit
-- reached, DS020 sold out). Units go to the buyers in array order; a buyer named twice gets one row.
-- What concerns the whole drop (DS001, DS010, DS011) and bad arguments (22023) are raised, as
-- reserve_item raises them. Two calls naming the same buyers in any order never deadlock: buyer locks
-- are taken in one order, whatever the array's.
CREATE FUNCTION reserve_items(drop_id uuid, user_ids uuid[])
RETURNS TABLE (user_id uuid, reservation_id uuid, expires_at timestamptz, created_at timestamptz,
               fresh boolean, sqlstate text, message text)
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
    RETURN QUERY SELECT * FROM dropstock._reserve(reserve_items.drop_id, reserve_items.user_ids);
END
$$;

-- reserve_item: hold one unit of a drop for the drop's hold_seconds, by the database clock.
-- A buyer who already holds a live hold on the drop gets that same hold back, so client retries are
-- safe. Refusals: DS001 unknown drop, DS002 unknown buyer, DS010 not started, DS011 ended,
-- DS021 per-user limit reached, DS020 sold out; 22023 for a missing argument.
-- Never NOTIFYs: the background worker publishes stock changes (a notifying commit takes a global lock).
CREATE FUNCTION reserve_item(drop_id uuid, user_id uuid)
RETURNS reservations
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    found_drop uuid;
    drop_name text;
    opens_at timestamptz;
    closes_at timestamptz;
    hold_seconds integer;
    per_user_limit integer;
    buyer_known boolean;
    live_id uuid;
    live_expires_at timestamptz;
    bought bigint;
    hold dropstock.reservations;
    unit_in_hand boolean := false;
BEGIN
    IF reserve_item.drop_id IS NULL OR reserve_item.user_id IS NULL THEN
        RAISE EXCEPTION 'drop id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Everything the decision needs, in one statement: this is the hot path of a drop.
    SELECT x.id, x.name, x.starts_at, x.ends_at, x.hold_seconds, x.per_user_limit,
           EXISTS (SELECT FROM dropstock.users u WHERE u.id = reserve_item.user_id),
           live.id, live.expires_at,
           (SELECT count(*) FROM dropstock.purchases p WHERE p.user_id = reserve_item.user_id AND p.drop_id = x.id)
      INTO found_drop, drop_name, opens_at, closes_at, hold_seconds, per_user_limit,
           buyer_known, live_id, live_expires_at, bought
      FROM dropstock.drops x
      LEFT JOIN dropstock.reservations live
        ON live.drop_id = x.id AND live.user_id = reserve_item.user_id AND live.status = 'reserved'
     WHERE x.id = reserve_item.drop_id;
    IF found_drop IS NULL THEN
        RAISE EXCEPTION 'drop % does not exist', reserve_item.drop_id USING ERRCODE = 'DS001';
    END IF;
    IF clock_timestamp() < opens_at THEN
        RAISE EXCEPTION 'drop "%" has not started yet', drop_name USING ERRCODE = 'DS010',
              DETAIL = format('It opens at %s.', opens_at);
    END IF;
    IF closes_at IS NOT NULL AND clock_timestamp() >= closes_at THEN
        RAISE EXCEPTION 'drop "%" has ended', drop_name USING ERRCODE = 'DS011',
              DETAIL = format('It closed at %s.', closes_at);
    END IF;
    IF NOT buyer_known THEN
        RAISE EXCEPTION 'user % does not exist', reserve_item.user_id USING ERRCODE = 'DS002';
    END IF;

    IF live_id IS NOT NULL THEN
        IF live_expires_at > clock_timestamp() THEN
            SELECT * INTO hold FROM dropstock.reservations r WHERE r.id = live_id;
            RETURN hold;
        END IF;
        -- The buyer's own hold ran out before a sweep saw it: end it and pass its unit to the new hold.
        UPDATE dropstock.reservations r SET status = 'expired' WHERE r.id = live_id AND r.status = 'reserved';
        unit_in_hand := FOUND;
    END IF;

    -- The limit counts live holds plus purchases; the buyer holds no live hold at this point.
    IF bought >= per_user_limit THEN
        RAISE EXCEPTION 'limit of % per buyer reached for drop "%"', per_user_limit, drop_name
              USING ERRCODE = 'DS021';
    END IF;

    IF NOT unit_in_hand AND NOT dropstock._claim_unit(found_drop) THEN
        RAISE EXCEPTION 'drop "%" is sold out', drop_name USING ERRCODE = 'DS020';
    END IF;

    -- The unique index on live holds settles concurrent calls of one buyer without any lock on the
    -- common path: the second insert waits for the first to commit, then inserts nothing.
    INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at)
    VALUES (found_drop, reserve_item.user_id, clock_timestamp() + make_interval(secs => hold_seconds))
    ON CONFLICT (drop_id, user_id) WHERE status = 'reserved' DO NOTHING  -- columns: use_column above
    RETURNING r.* INTO hold;
    IF NOT FOUND THEN
        -- A twin call made the hold first: give this unit back and answer with the twin's hold.
        PERFORM dropstock._adjust_stock(found_drop, 1, 0);
        SELECT * INTO hold FROM dropstock.reservations r
         WHERE r.drop_id = found_drop AND r.user_id = reserve_item.user_id AND r.status = 'reserved';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the hold changed while it was being read; try again'
                  USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN hold;
END
$$;

-- reserve_items: reserve_item for many buyers of one drop in one transaction, so that one commit (one
-- disk flush) serves them all. Each buyer gets exactly the answer reserve_item would have given them, as
-- one row: the live hold they already have (fresh = false), a new hold (fresh = true), or a refusal as a
-- SQLSTATE and message (DS002 unknown buyer, DS021 limit reached, DS020 sold out, 40001 retry). Buyers
-- are served in array order and a buyer named twice gets one row. What concerns the whole drop (DS001,
-- DS010, DS011) and bad arguments (22023) are raised, as reserve_item raises them.
CREATE FUNCTION reserve_items(drop_id uuid, user_ids uuid[])
RETURNS TABLE (user_id uuid, reservation_id uuid, expires_at timestamptz, created_at timestamptz,
               fresh boolean, sqlstate text, message text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    home constant smallint := pg_backend_pid() % 64;
    d dropstock.drops;
    buyer record;
    waiting uuid[] := '{}';    -- buyers who need a unit, in order
    in_hand integer := 0;      -- units of the buyers' own past-due holds, ended here
    wanted integer;
    granted integer := 0;
    from_stock integer;        -- units granted before the current attempt
    taken integer;
    winners uuid[];
    made uuid[];
    made_ids uuid[];
    made_expiries timestamptz[];
    made_times timestamptz[];
    twins uuid[];
    twin uuid;
    live dropstock.reservations;
    due_by timestamptz;        -- a variable, so the index on expires_at bounds the reclaim (see expiry.sql)
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
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = reserve_items.drop_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', reserve_items.drop_id USING ERRCODE = 'DS001';
    END IF;
    IF clock_timestamp() < d.starts_at THEN
        RAISE EXCEPTION 'drop "%" has not started yet', d.name USING ERRCODE = 'DS010',
              DETAIL = format('It opens at %s.', d.starts_at);
    END IF;
    IF d.ends_at IS NOT NULL AND clock_timestamp() >= d.ends_at THEN
        RAISE EXCEPTION 'drop "%" has ended', d.name USING ERRCODE = 'DS011',
              DETAIL = format('It closed at %s.', d.ends_at);
    END IF;

    -- Sort the buyers out: unknown, already holding, over the limit, or waiting for a unit.
    FOR buyer IN
        -- Scalar subqueries: one index probe per buyer, whatever the planner thinks of the drop's size.
        SELECT a.uid, EXISTS (SELECT FROM dropstock.users u WHERE u.id = a.uid) AS known,
               (SELECT r.id FROM dropstock.reservations r
                 WHERE r.drop_id = d.id AND r.user_id = a.uid AND r.status = 'reserved') AS live_id,
               (SELECT count(*) FROM dropstock.purchases p WHERE p.user_id = a.uid AND p.drop_id = d.id) AS bought
          FROM (SELECT t.uid, min(t.pos) AS pos FROM unnest(reserve_items.user_ids) WITH ORDINALITY AS t(uid, pos)
                 GROUP BY t.uid) a
         ORDER BY a.pos
    LOOP
        IF NOT buyer.known THEN
            RETURN QUERY SELECT buyer.uid, NULL::uuid, NULL::timestamptz, NULL::timestamptz, NULL::boolean,
                                'DS002'::text, format('user %s does not exist', buyer.uid);
            CONTINUE;
        END IF;
        IF buyer.live_id IS NOT NULL THEN
            SELECT * INTO live FROM dropstock.reservations r WHERE r.id = buyer.live_id;
            IF live.expires_at > clock_timestamp() THEN
                RETURN QUERY SELECT buyer.uid, live.id, live.expires_at, live.created_at, false, NULL::text, NULL::text;
                CONTINUE;
            END IF;
            -- The buyer's own hold ran out before a sweep saw it: its unit joins the ones in hand.
            UPDATE dropstock.reservations r SET status = 'expired'
             WHERE r.id = buyer.live_id AND r.status = 'reserved';
            IF FOUND THEN
                in_hand := in_hand + 1;
            END IF;
        END IF;
        IF buyer.bought >= d.per_user_limit THEN
            RETURN QUERY SELECT buyer.uid, NULL::uuid, NULL::timestamptz, NULL::timestamptz, NULL::boolean,
                                'DS021'::text, format('limit of %s per buyer reached for drop "%s"', d.per_user_limit, d.name);
            CONTINUE;
        END IF;
        waiting := waiting || buyer.uid;
    END LOOP;

    -- Units for the waiting buyers: those in hand first, then from slots (as many from one slot as it
    -- has, so a batch usually locks one or two). A batch that comes up short while other transactions
    -- hold slots with stock must not wait with its own slots locked: two short batches would each wait
    -- for the other's. So each attempt runs in a subtransaction, and a short attempt is undone (its units
    -- back, its slot locks released) before it polls and tries again.
    wanted := cardinality(waiting);
    granted := least(in_hand, wanted);
    in_hand := in_hand - granted;
    from_stock := granted;
    <<claiming>>
    FOR attempt IN 1..5000 LOOP
        BEGIN
            WHILE granted < wanted LOOP
                WITH pick AS (
                    SELECT f.slot, f.available FROM dropstock.stock_slots f
                     WHERE f.drop_id = d.id AND f.available > 0
                     ORDER BY f.slot >= home DESC, f.slot
                     LIMIT 1 FOR UPDATE SKIP LOCKED
                )
                UPDATE dropstock.stock_slots s SET available = s.available - least(pick.available, wanted - granted)
                  FROM pick WHERE s.drop_id = d.id AND s.slot = pick.slot
                RETURNING least(pick.available, wanted - granted) INTO taken;
                EXIT WHEN taken IS NULL;
                granted := granted + taken;
                taken := NULL;
            END LOOP;
            IF granted < wanted AND EXISTS (SELECT FROM dropstock.stock_slots f
                                             WHERE f.drop_id = d.id AND f.available > 0) THEN
                RAISE EXCEPTION 'short' USING ERRCODE = 'DS9RT';  -- undo this attempt, see above
            END IF;
            EXIT claiming;
        EXCEPTION WHEN SQLSTATE 'DS9RT' THEN
            granted := from_stock;
        END;
        IF attempt = 5000 THEN
            RAISE EXCEPTION 'drop % is too busy to answer; try again', d.id USING ERRCODE = 'lock_not_available';
        END IF;
        -- A random pause, so that two short batches do not keep colliding in step.
        PERFORM pg_sleep(0.0005 + random() * 0.002);
    END LOOP;
    IF granted < wanted THEN
        -- No free unit left anywhere: take over past-due holds, oldest first.
        due_by := clock_timestamp();
        WITH reclaimed AS (
            UPDATE dropstock.reservations r SET status = 'expired'
             WHERE r.id IN (SELECT x.id FROM dropstock.reservations x
                             WHERE x.drop_id = d.id AND x.status = 'reserved'
                               AND x.expires_at <= due_by
                             ORDER BY x.expires_at LIMIT wanted - granted FOR UPDATE SKIP LOCKED)
            RETURNING 1
        )
        SELECT granted + count(*) INTO granted FROM reclaimed;
    END IF;
    IF in_hand > 0 THEN
        PERFORM dropstock._adjust_stock(d.id, in_hand, 0);
    END IF;

    winners := waiting[1:granted];
    RETURN QUERY SELECT w, NULL::uuid, NULL::timestamptz, NULL::timestamptz, NULL::boolean,
                        'DS020'::text, format('drop "%s" is sold out', d.name)
                   FROM unnest(waiting[granted + 1:]) AS w;

    WITH made_holds AS (
        INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at)
        SELECT d.id, w, clock_timestamp() + make_interval(secs => d.hold_seconds) FROM unnest(winners) AS w
        ON CONFLICT (drop_id, user_id) WHERE status = 'reserved' DO NOTHING  -- columns: use_column above
        RETURNING r.user_id, r.id, r.expires_at, r.created_at
    )
    SELECT coalesce(array_agg(m.user_id), '{}'), array_agg(m.id), array_agg(m.expires_at), array_agg(m.created_at)
      INTO made, made_ids, made_expiries, made_times
      FROM made_holds m;
    RETURN QUERY SELECT m.uid, m.id, m.expires_at, m.created_at, true, NULL::text, NULL::text
                   FROM unnest(made, made_ids, made_expiries, made_times) AS m(uid, id, expires_at, created_at);

    -- Buyers whose own concurrent reserve_item made their hold first: their unit goes back, and they
    -- get that hold, as a retry would.
    IF cardinality(made) < cardinality(winners) THEN
        twins := ARRAY(SELECT w FROM unnest(winners) AS w WHERE w <> ALL (made));
        PERFORM dropstock._adjust_stock(d.id, cardinality(twins), 0);
        FOREACH twin IN ARRAY twins LOOP
            SELECT * INTO live FROM dropstock.reservations r
             WHERE r.drop_id = d.id AND r.user_id = twin AND r.status = 'reserved';
            IF FOUND THEN
                RETURN QUERY SELECT twin, live.id, live.expires_at, live.created_at, false, NULL::text, NULL::text;
            ELSE
                RETURN QUERY SELECT twin, NULL::uuid, NULL::timestamptz, NULL::timestamptz, NULL::boolean,
                                    '40001'::text, 'the hold changed while it was being read; try again'::text;
            END IF;
        END LOOP;
    END IF;
END
$$;

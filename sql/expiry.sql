-- expire_reservations: end up to max_rows holds that are past due and give their units back, each to
-- its variant: to the first buyers waiting for them in the drop's line, or to stock (_give_back);
-- returns how many holds it ended. Holds locked by an in-flight purchase or cancel are skipped (their owner decides
-- them); each hold is ended once, because only a locked row still marked 'reserved' is changed.
-- Run it in a loop until it returns less than max_rows to drain a backlog; the background worker does.
-- `due_after` limits the look to holds that fell due after it. Holds that ended leave dead entries at
-- the old end of the due-holds index until vacuum removes them; a sweep that starts from the oldest
-- entry walks all of them every time (14 ms a tick after a million holds came and went). The worker
-- passes the last few seconds on its frequent ticks and sweeps from the start now and then, for holds
-- skipped because a purchase or cancel had them locked.
CREATE FUNCTION expire_reservations(max_rows integer DEFAULT 1000, due_after timestamptz DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    -- A variable, not clock_timestamp() in the query: a volatile call cannot bound an index scan, and
    -- the sweep would read every live hold of the cluster on every tick.
    due_by constant timestamptz := clock_timestamp();
    ended integer := 0;
    per_drop record;
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be at least 1, got %', coalesce(max_rows::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Variants are refilled in (drop_id, variant) order so two concurrent sweeps that must wait for busy
    -- slots always wait in the same order and cannot deadlock.
    FOR per_drop IN
        WITH due AS (
            SELECT r.id FROM dropstock.reservations r
             WHERE r.status = 'reserved' AND r.expires_at <= due_by
               AND r.expires_at > coalesce(due_after, '-infinity')
             ORDER BY r.expires_at
             LIMIT max_rows
               FOR UPDATE SKIP LOCKED
        ), gone AS (
            UPDATE dropstock.reservations r SET status = 'expired'
              FROM due WHERE r.id = due.id
            RETURNING r.drop_id, r.variant, r.quantity, r.user_id
        )
        SELECT gone.drop_id, gone.variant, count(*)::integer AS holds, sum(gone.quantity)::integer AS units,
               array_agg(gone.user_id) AS buyers
          FROM gone GROUP BY gone.drop_id, gone.variant ORDER BY gone.drop_id, gone.variant
    LOOP
        PERFORM dropstock._give_back(per_drop.drop_id, per_drop.variant, per_drop.units, per_drop.buyers);
        ended := ended + per_drop.holds;
    END LOOP;
    RETURN ended;
END
$$;

-- archive_holds: move up to max_rows ended holds (expired or cancelled) whose time ran out before
-- `ended_before` from `reservations` to `archived_holds`; returns how many it moved. Purchased holds
-- and their sales stay, so stock counts and per-buyer limits read the same before and after. Run it in
-- a loop until it returns less than max_rows; each call is one short transaction's worth of work.
CREATE FUNCTION archive_holds(ended_before timestamptz DEFAULT now() - interval '1 day',
                              max_rows integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    moved integer;
BEGIN
    IF ended_before IS NULL OR max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'ended_before is required and max_rows must be at least 1'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Holds a purchase, cancel or reserve is deciding right now are skipped; only ended ones move,
    -- and an ended hold never changes again.
    WITH gone AS (
        DELETE FROM dropstock.reservations r
         WHERE r.id IN (SELECT x.id FROM dropstock.reservations x
                         WHERE x.status IN ('expired', 'cancelled') AND x.expires_at < ended_before
                         LIMIT max_rows FOR UPDATE SKIP LOCKED)
        RETURNING r.id, r.drop_id, r.user_id, r.status, r.expires_at, r.created_at, r.variant, r.quantity,
                  r.extensions, r.offered
    )
    INSERT INTO dropstock.archived_holds (id, drop_id, user_id, status, expires_at, created_at, variant, quantity,
                                          extensions, offered)
    SELECT g.id, g.drop_id, g.user_id, g.status, g.expires_at, g.created_at, g.variant, g.quantity, g.extensions,
           g.offered
      FROM gone g;
    GET DIAGNOSTICS moved = ROW_COUNT;
    -- Cooldowns that have passed mean nothing any more.
    DELETE FROM dropstock.cooldowns c WHERE c.until < now();
    RETURN moved;
END
$$;

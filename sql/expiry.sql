-- expire_reservations: end up to max_rows holds that are past due and give their units back; returns
-- how many it ended. Holds locked by an in-flight purchase or cancel are skipped (their owner decides
-- them); each hold is ended once, because only a locked row still marked 'reserved' is changed.
-- Run it in a loop until it returns less than max_rows to drain a backlog; the background worker does.
CREATE FUNCTION expire_reservations(max_rows integer DEFAULT 1000)
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
    -- Drops are refilled in drop_id order so two concurrent sweeps that must wait for busy slots
    -- always wait in the same order and cannot deadlock.
    FOR per_drop IN
        WITH due AS (
            SELECT r.id FROM dropstock.reservations r
             WHERE r.status = 'reserved' AND r.expires_at <= due_by
             ORDER BY r.expires_at
             LIMIT max_rows
               FOR UPDATE SKIP LOCKED
        ), gone AS (
            UPDATE dropstock.reservations r SET status = 'expired'
              FROM due WHERE r.id = due.id
            RETURNING r.drop_id
        )
        SELECT gone.drop_id, count(*)::integer AS units FROM gone GROUP BY gone.drop_id ORDER BY gone.drop_id
    LOOP
        PERFORM dropstock._adjust_stock(per_drop.drop_id, per_drop.units, 0);
        ended := ended + per_drop.units;
    END LOOP;
    RETURN ended;
END
$$;

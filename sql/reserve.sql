-- reserve_item: hold one unit of a drop for the drop's hold_seconds, by the database clock.
-- A buyer who already holds a live hold on the drop gets that same hold back, so client retries are
-- safe. Refusals: DS001 unknown drop, DS002 unknown buyer, DS010 not started, DS011 ended,
-- DS021 per-user limit reached, DS020 sold out; 22023 for a missing argument.
-- Never NOTIFYs: the background worker publishes stock changes (a notifying commit takes a global lock).
CREATE FUNCTION reserve_item(drop_id uuid, user_id uuid)
RETURNS reservations
LANGUAGE plpgsql
AS $$
DECLARE
    d dropstock.drops;
    hold dropstock.reservations;
    unit_in_hand boolean := false;
BEGIN
    IF reserve_item.drop_id IS NULL OR reserve_item.user_id IS NULL THEN
        RAISE EXCEPTION 'drop id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = reserve_item.drop_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', reserve_item.drop_id USING ERRCODE = 'DS001';
    END IF;
    IF clock_timestamp() < d.starts_at THEN
        RAISE EXCEPTION 'drop "%" has not started yet', d.name USING ERRCODE = 'DS010',
              DETAIL = format('It opens at %s.', d.starts_at);
    END IF;
    IF d.ends_at IS NOT NULL AND clock_timestamp() >= d.ends_at THEN
        RAISE EXCEPTION 'drop "%" has ended', d.name USING ERRCODE = 'DS011',
              DETAIL = format('It closed at %s.', d.ends_at);
    END IF;
    PERFORM FROM dropstock.users u WHERE u.id = reserve_item.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', reserve_item.user_id USING ERRCODE = 'DS002';
    END IF;

    -- One buyer's calls on one drop take turns (until commit), so a retry sees the hold its twin made.
    -- Buyers never wait on each other here; only the same buyer's concurrent calls do.
    PERFORM pg_advisory_xact_lock(1146290177, hashtext(reserve_item.drop_id::text || reserve_item.user_id::text));

    SELECT * INTO hold FROM dropstock.reservations r
     WHERE r.drop_id = reserve_item.drop_id AND r.user_id = reserve_item.user_id AND r.status = 'reserved';
    IF FOUND THEN
        IF hold.expires_at > clock_timestamp() THEN
            RETURN hold;
        END IF;
        -- The buyer's own hold ran out before a sweep saw it: end it and pass its unit to the new hold.
        UPDATE dropstock.reservations r SET status = 'expired'
         WHERE r.id = hold.id AND r.status = 'reserved';
        unit_in_hand := FOUND;
    END IF;

    -- The limit counts live holds plus purchases; the buyer holds no live hold at this point.
    IF (SELECT count(*) FROM dropstock.purchases p
         WHERE p.user_id = reserve_item.user_id AND p.drop_id = reserve_item.drop_id) >= d.per_user_limit THEN
        RAISE EXCEPTION 'limit of % per buyer reached for drop "%"', d.per_user_limit, d.name
              USING ERRCODE = 'DS021';
    END IF;

    IF NOT unit_in_hand AND NOT dropstock._claim_unit(d.id) THEN
        RAISE EXCEPTION 'drop "%" is sold out', d.name USING ERRCODE = 'DS020';
    END IF;

    INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at)
    VALUES (d.id, reserve_item.user_id, clock_timestamp() + make_interval(secs => d.hold_seconds))
    RETURNING r.* INTO hold;
    RETURN hold;
END
$$;

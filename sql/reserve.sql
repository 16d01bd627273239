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

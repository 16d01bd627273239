-- purchase: turn the buyer's live hold into a sale of all its units, exactly once; a retry returns the
-- same sale.
-- Refusals: DS003 unknown reservation, DS031 another buyer's hold, DS030 hold expired (by the database
-- clock, even before any sweep has run), DS032 hold cancelled, DS021 the sale would pass the drop's
-- per-buyer limit; 22023 for a missing argument.
-- Never NOTIFYs (see reserve_item).
CREATE FUNCTION purchase(reservation_id uuid, user_id uuid)
RETURNS purchases
LANGUAGE plpgsql
AS $$
DECLARE
    hold dropstock.reservations;
    d dropstock.drops;
    sale dropstock.purchases;
BEGIN
    IF purchase.reservation_id IS NULL OR purchase.user_id IS NULL THEN
        RAISE EXCEPTION 'reservation id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    hold := dropstock._lock_hold(purchase.reservation_id, purchase.user_id);

    IF hold.status = 'purchased' THEN
        SELECT * INTO sale FROM dropstock.purchases p WHERE p.reservation_id = hold.id;
        RETURN sale;
    ELSIF hold.status = 'cancelled' THEN
        RAISE EXCEPTION 'reservation % was cancelled', hold.id USING ERRCODE = 'DS032',
              HINT = 'Reserve the item again.';
    ELSIF hold.status = 'expired' OR hold.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'reservation % expired', hold.id USING ERRCODE = 'DS030',
              DETAIL = format('The hold ran out at %s.', hold.expires_at), HINT = 'Reserve the item again.';
    END IF;

    -- reserve_item never grants a hold past the limit, but a sale is what the limit is about: it is
    -- checked here too, under the same buyer lock, so no path around reserve_item can pass it.
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = hold.drop_id;
    IF (SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p
         WHERE p.user_id = hold.user_id AND p.drop_id = hold.drop_id) + hold.quantity > d.per_user_limit THEN
        RAISE EXCEPTION 'limit of % per buyer reached for drop "%"', d.per_user_limit, d.name
              USING ERRCODE = 'DS021', HINT = 'Cancel the reservation to give the units back.';
    END IF;

    UPDATE dropstock.reservations r SET status = 'purchased' WHERE r.id = hold.id;
    PERFORM dropstock._adjust_stock(hold.drop_id, hold.variant, 0, hold.quantity);
    PERFORM dropstock._tell_worker_at_commit(hold.drop_id);  -- the feed shows it within milliseconds (extension/src/wake.rs)
    INSERT INTO dropstock.purchases AS p (reservation_id, drop_id, user_id, price, variant, quantity)
    VALUES (hold.id, hold.drop_id, hold.user_id, d.price, hold.variant, hold.quantity)
    RETURNING p.* INTO sale;
    RETURN sale;
END
$$;

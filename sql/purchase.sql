-- purchase: turn the buyer's live hold into a sale, exactly once; a retry returns the same sale.
-- Refusals: DS003 unknown reservation, DS031 another buyer's hold, DS030 hold expired (by the database
-- clock, even before any sweep has run), DS032 hold cancelled; 22023 for a missing argument.
-- Never NOTIFYs (see reserve_item).
CREATE FUNCTION purchase(reservation_id uuid, user_id uuid)
RETURNS purchases
LANGUAGE plpgsql
AS $$
DECLARE
    hold dropstock.reservations;
    sale dropstock.purchases;
BEGIN
    IF purchase.reservation_id IS NULL OR purchase.user_id IS NULL THEN
        RAISE EXCEPTION 'reservation id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The row lock orders this purchase against a concurrent cancel, retry or sweep of the same hold.
    SELECT * INTO hold FROM dropstock.reservations r WHERE r.id = purchase.reservation_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reservation % does not exist', purchase.reservation_id USING ERRCODE = 'DS003';
    END IF;
    IF hold.user_id <> purchase.user_id THEN
        RAISE EXCEPTION 'reservation % belongs to another buyer', hold.id USING ERRCODE = 'DS031';
    END IF;

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

    UPDATE dropstock.reservations r SET status = 'purchased' WHERE r.id = hold.id;
    PERFORM dropstock._adjust_stock(hold.drop_id, 0, 1);
    INSERT INTO dropstock.purchases AS p (reservation_id, drop_id, user_id, price)
    SELECT hold.id, hold.drop_id, hold.user_id, d.price FROM dropstock.drops d WHERE d.id = hold.drop_id
    RETURNING p.* INTO sale;
    RETURN sale;
END
$$;

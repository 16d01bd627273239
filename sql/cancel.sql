-- cancel_reservation: the buyer gives a live hold back; its units go at once to the first buyers waiting
-- for them in the drop's line, or are free again, in its variant (_give_back).
-- Cancelling a hold that is already cancelled or expired changes nothing and returns it as it is.
-- Refusals: DS003 unknown reservation, DS031 another buyer's hold, DS033 already purchased;
-- 22023 for a missing argument.
CREATE FUNCTION cancel_reservation(reservation_id uuid, user_id uuid)
RETURNS reservations
LANGUAGE plpgsql
AS $$
DECLARE
    hold dropstock.reservations;
BEGIN
    IF cancel_reservation.reservation_id IS NULL OR cancel_reservation.user_id IS NULL THEN
        RAISE EXCEPTION 'reservation id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    hold := dropstock._lock_hold(cancel_reservation.reservation_id, cancel_reservation.user_id);
    IF hold.status = 'purchased' THEN
        RAISE EXCEPTION 'reservation % is already purchased', hold.id USING ERRCODE = 'DS033';
    ELSIF hold.status <> 'reserved' THEN
        RETURN hold;
    END IF;

    UPDATE dropstock.reservations r SET status = 'cancelled' WHERE r.id = hold.id RETURNING r.* INTO hold;
    PERFORM dropstock._give_back(hold.drop_id, hold.variant, hold.quantity, ARRAY[hold.user_id]);
    RETURN hold;
END
$$;

-- Striped stock: take a unit from, or give units back to, one of a drop's slot rows.
-- Internal helpers (leading underscore); the public API in reserve.sql, purchase.sql, cancel.sql and
-- expiry.sql is what applications call.

-- _adjust_stock: add `available_delta` free units and `sold_delta` sales to any one slot of the drop.
-- Any slot will do because only the sums matter: take one nobody is committing on right now, and wait
-- for a busy one only when every slot is busy.
CREATE FUNCTION _adjust_stock(drop_id uuid, available_delta integer, sold_delta integer)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE dropstock.stock_slots s
       SET available = s.available + available_delta, sold = s.sold + sold_delta
     WHERE (s.drop_id, s.slot) = (SELECT f.drop_id, f.slot FROM dropstock.stock_slots f
                                   WHERE f.drop_id = _adjust_stock.drop_id
                                   LIMIT 1 FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
        UPDATE dropstock.stock_slots s
           SET available = s.available + available_delta, sold = s.sold + sold_delta
         WHERE (s.drop_id, s.slot) = (SELECT f.drop_id, f.slot FROM dropstock.stock_slots f
                                       WHERE f.drop_id = _adjust_stock.drop_id
                                       ORDER BY f.slot LIMIT 1 FOR UPDATE);
    END IF;
END
$$;

-- _claim_unit: take one unit of the drop for a new hold; false means sold out.
-- In order of cost: a free unit from a slot nobody else is locking; the unit of a hold that is past due
-- but not yet swept (so a drop is never reported sold out while it has dead holds); and only then a wait
-- for a busy slot that still has stock, whose holder may roll back.
CREATE FUNCTION _claim_unit(drop_id uuid)
RETURNS boolean
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE dropstock.stock_slots s
       SET available = s.available - 1
     WHERE (s.drop_id, s.slot) = (SELECT f.drop_id, f.slot FROM dropstock.stock_slots f
                                   WHERE f.drop_id = _claim_unit.drop_id AND f.available > 0
                                   LIMIT 1 FOR UPDATE SKIP LOCKED);
    IF FOUND THEN
        RETURN true;
    END IF;

    -- The past-due hold's unit passes straight to the new hold: stock totals do not move.
    UPDATE dropstock.reservations r
       SET status = 'expired'
     WHERE r.id = (SELECT d.id FROM dropstock.reservations d
                    WHERE d.drop_id = _claim_unit.drop_id AND d.status = 'reserved'
                      AND d.expires_at <= clock_timestamp()
                    ORDER BY d.expires_at LIMIT 1 FOR UPDATE SKIP LOCKED);
    IF FOUND THEN
        RETURN true;
    END IF;

    UPDATE dropstock.stock_slots s
       SET available = s.available - 1
     WHERE (s.drop_id, s.slot) = (SELECT f.drop_id, f.slot FROM dropstock.stock_slots f
                                   WHERE f.drop_id = _claim_unit.drop_id AND f.available > 0
                                   LIMIT 1 FOR UPDATE);
    RETURN FOUND;
END
$$;

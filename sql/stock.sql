-- Striped stock: take a unit from, or give units back to, one of a drop's slot rows.
-- Internal helpers (leading underscore); the public API in reserve.sql, purchase.sql, cancel.sql and
-- expiry.sql is what applications call.

-- Lock discipline, which keeps slot locks free of deadlocks: a reserver never waits for a slot lock
-- (it skips busy slots and, at the very end of a drop, polls), and whoever gives units back waits for at
-- most one slot per drop, taking drops in id order. A slot whose stock ran out while this transaction
-- was skipping past it can stay locked by it until commit; that is why nothing may wait on slot locks
-- while holding one of the same drop.

-- _adjust_stock: add `available_delta` free units and `sold_delta` sales to any one slot of the drop.
-- Any slot will do because only the sums matter: take one nobody is committing on right now, and wait
-- for the first slot only when every slot is busy.
CREATE FUNCTION _adjust_stock(drop_id uuid, available_delta integer, sold_delta integer)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE dropstock.stock_slots s
       SET available = s.available + available_delta, sold = s.sold + sold_delta
     WHERE (s.drop_id, s.slot) = (SELECT f.drop_id, f.slot FROM dropstock.stock_slots f
                                   WHERE f.drop_id = _adjust_stock.drop_id
                                   ORDER BY f.slot >= pg_backend_pid() % 64 DESC, f.slot
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
-- but not yet swept (so a drop is never reported sold out while it has dead holds); and, when the only
-- units left sit in slots other buyers are committing on right now, a short poll until they commit or
-- roll back.
CREATE FUNCTION _claim_unit(drop_id uuid)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    home constant smallint := pg_backend_pid() % 64;
    due_by timestamptz;  -- a variable, so the index on expires_at bounds the reclaim (see expiry.sql)
BEGIN
    FOR attempt IN 1..5000 LOOP
        -- Each backend starts at its own home slot, so concurrent buyers rarely even look at a slot
        -- another one holds; then it tries the slots below home.
        UPDATE dropstock.stock_slots s
           SET available = s.available - 1
         WHERE (s.drop_id, s.slot) = (SELECT f.drop_id, f.slot FROM dropstock.stock_slots f
                                       WHERE f.drop_id = _claim_unit.drop_id AND f.slot >= home AND f.available > 0
                                       ORDER BY f.slot LIMIT 1 FOR UPDATE SKIP LOCKED);
        IF FOUND THEN
            RETURN true;
        END IF;
        UPDATE dropstock.stock_slots s
           SET available = s.available - 1
         WHERE (s.drop_id, s.slot) = (SELECT f.drop_id, f.slot FROM dropstock.stock_slots f
                                       WHERE f.drop_id = _claim_unit.drop_id AND f.slot < home AND f.available > 0
                                       ORDER BY f.slot LIMIT 1 FOR UPDATE SKIP LOCKED);
        IF FOUND THEN
            RETURN true;
        END IF;

        IF attempt = 1 THEN
            due_by := clock_timestamp();
            -- The past-due hold's unit passes straight to the new hold: stock totals do not move.
            UPDATE dropstock.reservations r
               SET status = 'expired'
             WHERE r.id = (SELECT d.id FROM dropstock.reservations d
                            WHERE d.drop_id = _claim_unit.drop_id AND d.status = 'reserved'
                              AND d.expires_at <= due_by
                            ORDER BY d.expires_at LIMIT 1 FOR UPDATE SKIP LOCKED);
            IF FOUND THEN
                RETURN true;
            END IF;
        END IF;

        -- Committed stock left, all of it in busy slots: their holders finish within milliseconds.
        IF NOT EXISTS (SELECT FROM dropstock.stock_slots f
                        WHERE f.drop_id = _claim_unit.drop_id AND f.available > 0) THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.001);
    END LOOP;
    RAISE EXCEPTION 'drop % is too busy to answer; try again', _claim_unit.drop_id
          USING ERRCODE = 'lock_not_available';
END
$$;

-- Striped stock: take units from, or give units back to, a variant's slot rows; and the buyer lock.
-- Every stock helper works on one variant of a drop (variant 0 for a drop without sizes).
-- Internal helpers (leading underscore); the public API in reserve.sql, purchase.sql, cancel.sql and
-- expiry.sql is what applications call.
--
-- Lock discipline. Every function of the API takes its locks in this order, and that order is what
-- makes the API free of deadlocks and of "try again" answers:
--   1. buyer locks (_lock_buyers), in ascending key order;
--   2. hold rows (a buyer's own hold, by the function acting on it; the sweep takes due holds with
--      SKIP LOCKED and so never waits for one);
--   3. slot rows, ranked by (drop, variant, slot). A claimer works on one variant at a time, variants
--      in ascending order, and first takes slots nobody is committing on (SKIP LOCKED, no waiting).
--      When the only stock left sits in slots other transactions have locked, it lets go of every slot
--      its first pass locked and then waits: for one unit, on one slot while holding none of that
--      variant; for several, in ascending slot order, only for slots above every slot of that variant
--      it holds (_claim_units). It holds slots of lower variants only, never of higher ones. Whoever
--      gives units back waits for at most one slot of a variant, holding none of that variant, and
--      takes (drop, variant) pairs in ascending order.
-- A wait for a lock of a lower rank never happens while holding one of a higher rank, and waits within
-- a rank follow one order, so no cycle of waits can form. Nothing polls, and the answer is known as
-- soon as the transactions ahead in line end.
-- The waiting list's line locks (waitlist.sql) stand beside this order. Whoever gives units back takes
-- them in shared mode, in ascending (drop, variant) order, and shared holders never wait for each
-- other; join_waitlist takes them exclusively, in the same order, holding nothing but a buyer lock,
-- and waits for nothing else while it holds one. So a wait for a line lock always ends when its
-- holders' transactions do. Line rows are taken with SKIP LOCKED by whoever serves the line.

-- _lock_buyers: take the buyer lock of each (drop, buyer), in ascending key order, until the end of the
-- transaction. Everything that decides what a buyer holds or has bought on a drop (reserve, purchase,
-- cancel) takes it first, so those decisions for one buyer happen one at a time, each reading what the
-- previous one committed: the per-buyer limit cannot be passed by two calls that overlap, and two calls
-- of one buyer never race to insert the same hold. The lock is a transaction-level advisory lock on a
-- 64-bit hash of the pair: cheap, held in memory only, released at commit or rollback. Two pairs that
-- share a hash only wait for each other.
CREATE FUNCTION _buyer_key(drop_id uuid, user_id uuid)
RETURNS bigint
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.uuid_hash_extended(user_id, pg_catalog.uuid_hash_extended(drop_id, 0)) $$;

-- _line_key: the advisory lock key of a drop's waiting line for one variant (waitlist.sql; variant -1:
-- the drop's draw, draw.sql). A collision with another key only makes two unrelated calls wait for
-- each other.
CREATE FUNCTION _line_key(drop_id uuid, variant smallint)
RETURNS bigint
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.uuid_hash_extended(drop_id, 4294967296 + variant) $$;

-- _line_waits: whether anybody in the drop's line waits for units of the variant: they accept it, and
-- no other size is being kept for them. The one definition of "somebody waits for these units", which
-- the reclaim, the reservation and the give-back all ask (_serve_line picks its rows by it).
-- plpgsql rather than SQL: a SQL function with a subquery is never inlined, and PostgreSQL plans its
-- body again on every statement that calls it, where plpgsql keeps the plan (an eighth of a hold's
-- time on the fast path, measured).
CREATE FUNCTION _line_waits(drop_id uuid, variant smallint)
RETURNS boolean
LANGUAGE plpgsql
STABLE
AS $$
BEGIN
    RETURN EXISTS (SELECT FROM dropstock.waitlist w
                    WHERE w.drop_id = _line_waits.drop_id AND _line_waits.variant = ANY (w.variants)
                      AND (w.kept_variant IS NULL OR w.kept_variant = _line_waits.variant));
END
$$;

CREATE FUNCTION _lock_buyers(drop_id uuid, user_ids uuid[])
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    -- The decisions read state with a fresh snapshot per statement after the lock is granted; under
    -- REPEATABLE READ or SERIALIZABLE they would read the state from before the wait, and the limit
    -- could be passed. So those isolation levels are refused rather than served wrongly.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'dropstock needs READ COMMITTED transactions, not %', current_setting('transaction_isolation')
              USING ERRCODE = 'invalid_transaction_state',
                    HINT = 'Call it outside an explicit REPEATABLE READ or SERIALIZABLE transaction.';
    END IF;
    IF cardinality(user_ids) = 1 THEN
        PERFORM pg_advisory_xact_lock(dropstock._buyer_key(drop_id, user_ids[1]));
    ELSE
        PERFORM pg_advisory_xact_lock(k.key)
           FROM (SELECT DISTINCT dropstock._buyer_key(_lock_buyers.drop_id, u) AS key
                   FROM unnest(user_ids) AS u ORDER BY 1) AS k;
    END IF;
END
$$;

-- _lock_hold: the hold `reservation_id`, locked for `user_id` to decide (purchase, cancel), in the order
-- above: whose hold it is decides which buyer lock to take, the buyer lock comes before the row lock,
-- and the row is read again under both. A hold that archive_holds moved away (before the call, or while
-- it waited) is returned as it ended, unlocked: an ended hold never changes again. Refusals: DS003
-- unknown reservation, DS031 another buyer's hold.
CREATE FUNCTION _lock_hold(reservation_id uuid, user_id uuid)
RETURNS reservations
LANGUAGE plpgsql
AS $$
DECLARE
    owner record;
    hold dropstock.reservations;
BEGIN
    SELECT r.drop_id, r.user_id INTO owner FROM dropstock.reservations r WHERE r.id = _lock_hold.reservation_id;
    IF FOUND THEN
        IF owner.user_id <> _lock_hold.user_id THEN
            RAISE EXCEPTION 'reservation % belongs to another buyer', _lock_hold.reservation_id USING ERRCODE = 'DS031';
        END IF;
        PERFORM dropstock._lock_buyers(owner.drop_id, ARRAY[owner.user_id]);
        SELECT * INTO hold FROM dropstock.reservations r WHERE r.id = _lock_hold.reservation_id FOR UPDATE;
        IF FOUND THEN
            RETURN hold;
        END IF;
    END IF;
    SELECT a.id, a.drop_id, a.user_id, a.status, a.expires_at, a.created_at, a.variant, a.quantity, a.extensions,
           a.offered
      INTO hold
      FROM dropstock.archived_holds a WHERE a.id = _lock_hold.reservation_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reservation % does not exist', _lock_hold.reservation_id USING ERRCODE = 'DS003';
    END IF;
    IF hold.user_id <> _lock_hold.user_id THEN
        RAISE EXCEPTION 'reservation % belongs to another buyer', _lock_hold.reservation_id USING ERRCODE = 'DS031';
    END IF;
    RETURN hold;
END
$$;

-- _adjust_stock: add `available_delta` free units and `sold_delta` sales to any one slot of the variant.
-- Any slot will do because only the sums matter: take one nobody is committing on right now, and wait
-- for the first slot only when every slot is busy (the caller holds no slot of this variant then, or
-- it would have found its own).
CREATE FUNCTION _adjust_stock(drop_id uuid, variant smallint, available_delta integer, sold_delta integer)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE dropstock.stock_slots s
       SET available = s.available + available_delta, sold = s.sold + sold_delta
     WHERE (s.drop_id, s.variant, s.slot) = (SELECT f.drop_id, f.variant, f.slot FROM dropstock.stock_slots f
                                   WHERE f.drop_id = _adjust_stock.drop_id AND f.variant = _adjust_stock.variant
                                   ORDER BY f.slot >= pg_backend_pid() % 64 DESC, f.slot
                                   LIMIT 1 FOR UPDATE SKIP LOCKED);
    IF NOT FOUND THEN
        UPDATE dropstock.stock_slots s
           SET available = s.available + available_delta, sold = s.sold + sold_delta
         WHERE (s.drop_id, s.variant, s.slot) = (SELECT f.drop_id, f.variant, f.slot FROM dropstock.stock_slots f
                                       WHERE f.drop_id = _adjust_stock.drop_id AND f.variant = _adjust_stock.variant
                                       ORDER BY f.slot LIMIT 1 FOR UPDATE);
    END IF;
END
$$;

-- _claim_free: the first pass of _claim_units: up to `wanted` units from slots nobody else is locking,
-- starting at this backend's home slot so that concurrent buyers rarely even look at the same slot.
-- It is meant never to wait, but SKIP LOCKED does not cover everything: locking a slot row whose newer
-- version another transaction is still writing waits for that transaction ("while locking updated
-- version"), and such a wait, taken out of slot order, could close a cycle with claimers waiting in
-- order. _claim_units runs it under a short lock_timeout, which turns any such wait into 55P03: it then
-- undoes this pass and waits in order instead.
CREATE FUNCTION _claim_free(drop_id uuid, variant smallint, wanted integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    home constant smallint := pg_backend_pid() % 64;
    low smallint := home;                    -- the slots the multi-unit loop looks at: [low, high)
    high smallint := 64;
    granted integer := 0;
    taken integer;
BEGIN
    IF wanted = 1 THEN
        -- One unit: the hot path of a drop, two index probes at most.
        UPDATE dropstock.stock_slots s
           SET available = s.available - 1
         WHERE (s.drop_id, s.variant, s.slot) = (SELECT f.drop_id, f.variant, f.slot FROM dropstock.stock_slots f
                                       WHERE f.drop_id = _claim_free.drop_id AND f.variant = _claim_free.variant AND f.slot >= home AND f.available > 0
                                       ORDER BY f.slot LIMIT 1 FOR UPDATE SKIP LOCKED);
        IF NOT FOUND THEN
            UPDATE dropstock.stock_slots s
               SET available = s.available - 1
             WHERE (s.drop_id, s.variant, s.slot) = (SELECT f.drop_id, f.variant, f.slot FROM dropstock.stock_slots f
                                           WHERE f.drop_id = _claim_free.drop_id AND f.variant = _claim_free.variant AND f.slot < home AND f.available > 0
                                           ORDER BY f.slot LIMIT 1 FOR UPDATE SKIP LOCKED);
        END IF;
        RETURN CASE WHEN FOUND THEN 1 ELSE 0 END;
    END IF;
    -- As many from one slot as it has, so a batch usually locks one or two: slots from home up, then
    -- below home, each look an index probe that stops at the first free slot (an ORDER BY on
    -- "slot >= home" would read and sort every slot of the variant on every look).
    WHILE granted < wanted LOOP
        WITH pick AS (
            SELECT f.slot, f.available FROM dropstock.stock_slots f
             WHERE f.drop_id = _claim_free.drop_id AND f.variant = _claim_free.variant
               AND f.slot >= low AND f.slot < high AND f.available > 0
             ORDER BY f.slot
             LIMIT 1 FOR UPDATE SKIP LOCKED
        )
        UPDATE dropstock.stock_slots s SET available = s.available - least(pick.available, wanted - granted)
          FROM pick WHERE s.drop_id = _claim_free.drop_id AND s.variant = _claim_free.variant AND s.slot = pick.slot
        RETURNING least(pick.available, wanted - granted) INTO taken;
        IF FOUND THEN
            granted := granted + taken;
        ELSIF low = home AND home > 0 THEN
            low := 0;
            high := home;
        ELSE
            EXIT;
        END IF;
    END LOOP;
    RETURN granted;
END
$$;

-- _claim_units: take up to `wanted` free units of the variant; returns how many it took. Fewer than
-- wanted means no free unit is left (committed, and in no slot another transaction holds): the stock
-- is exactly known to be gone, never guessed.
-- First _claim_free. When that comes up short, it waits for a slot that still has stock: for one
-- unit, any one such slot while holding none of the variant; for several, such slots in ascending
-- order (see the discipline above). Before it waits it lets go of every slot the first pass
-- locked, by undoing that pass (a subtransaction): a pass can keep a slot locked that it only skipped
-- (a slot emptied by a commit after the statement's snapshot stays locked once the row lock is taken,
-- although the row is then passed over), and two claimers that each kept one while waiting for the
-- other's would deadlock.
CREATE FUNCTION _claim_units(drop_id uuid, variant smallint, wanted integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    granted integer := 0;
    taken integer;
    last_slot smallint := -1;
    previous_timeout text;
BEGIN
    IF wanted < 1 THEN
        RETURN 0;
    END IF;
    -- The first pass under a short lock_timeout (see _claim_free). Set here rather than as a SET clause
    -- on _claim_free, which cost a sixth of reserve_item's time; the subtransaction's end puts the
    -- caller's own value back if the pass is undone, and the success path puts it back itself.
    previous_timeout := current_setting('lock_timeout');
    BEGIN
        PERFORM set_config('lock_timeout', '20ms', true);
        FOR attempt IN 1..10 LOOP
            granted := dropstock._claim_free(_claim_units.drop_id, _claim_units.variant, wanted);
            IF granted = wanted THEN
                PERFORM set_config('lock_timeout', previous_timeout, true);
                RETURN granted;
            END IF;
            -- One unit while every slot with stock is busy: with many buyers per slot this is common
            -- long before a sell-out, and a slot frees up within a commit. A few short tries pick
            -- whichever frees first, where queueing on one slot would wait out its holder's commit
            -- (and chain the waiters' commits one after the other: 0.4x the throughput, measured).
            EXIT WHEN wanted > 1 OR NOT EXISTS (SELECT FROM dropstock.stock_slots f
                                                 WHERE f.drop_id = _claim_units.drop_id AND f.variant = _claim_units.variant AND f.available > 0);
            PERFORM pg_sleep(0.0005 + random() * 0.001);
        END LOOP;
        RAISE EXCEPTION 'short' USING ERRCODE = 'DS9RT';  -- undo the pass, let its slots go
    EXCEPTION WHEN SQLSTATE 'DS9RT' OR lock_not_available THEN
        granted := 0;
    END;

    -- Stock is left only in slots other transactions hold, or nowhere.
    IF wanted = 1 THEN
        -- One unit: queue on one slot that has stock, chosen from home like the first pass so that
        -- waiters spread over the slots instead of all queueing on the first one, and hold nothing else
        -- while waiting (a waiter that holds nothing cannot be part of a cycle). If the slot's holder took
        -- its last unit, the row stays locked after the wait although nothing was taken: undo that and
        -- choose again. Each round waits for another transaction to end, so stock runs out or a unit is
        -- had; the answer is never a guess.
        LOOP
            SELECT f.slot INTO last_slot FROM dropstock.stock_slots f
             WHERE f.drop_id = _claim_units.drop_id AND f.variant = _claim_units.variant AND f.available > 0
             ORDER BY f.slot >= pg_backend_pid() % 64 DESC, f.slot LIMIT 1;
            IF NOT FOUND THEN
                RETURN 0;
            END IF;
            BEGIN
                UPDATE dropstock.stock_slots s SET available = s.available - 1
                 WHERE s.drop_id = _claim_units.drop_id AND s.variant = _claim_units.variant AND s.slot = last_slot AND s.available > 0;
                IF FOUND THEN
                    RETURN 1;
                END IF;
                RAISE EXCEPTION 'emptied' USING ERRCODE = 'DS9RT';  -- let the emptied slot go
            EXCEPTION WHEN SQLSTATE 'DS9RT' THEN
                NULL;
            END;
        END LOOP;
    END IF;

    -- Several units: wait for the slots that have stock in ascending order, holding no slot of this
    -- drop above the one waited for. A slot whose holder took its last unit is passed over once that
    -- holder commits (the row is read again after the wait).
    WHILE granted < wanted LOOP
        WITH pick AS (
            SELECT f.slot, f.available FROM dropstock.stock_slots f
             WHERE f.drop_id = _claim_units.drop_id AND f.variant = _claim_units.variant AND f.slot > last_slot AND f.available > 0
             ORDER BY f.slot LIMIT 1 FOR UPDATE
        )
        UPDATE dropstock.stock_slots s SET available = s.available - least(pick.available, wanted - granted)
          FROM pick WHERE s.drop_id = _claim_units.drop_id AND s.variant = _claim_units.variant AND s.slot = pick.slot
        RETURNING pick.slot, least(pick.available, wanted - granted) INTO last_slot, taken;
        EXIT WHEN NOT FOUND;
        granted := granted + taken;
    END LOOP;
    RETURN granted;
END
$$;

-- _reclaim_due: end holds of the variant that are past due but not yet swept, oldest first, until they
-- make up `wanted` units (at most `wanted` holds), and return how many units they had; their units pass
-- straight to new holds (stock totals do not move; the caller gives back what it does not use), so a
-- size is never reported sold out while it has dead holds. Holds another transaction is deciding
-- (a purchase, a cancel, the sweep) are skipped: their owner settles them.
-- It may run while the caller holds slots of the drop, and the transaction deciding a hold may be
-- waiting for one of them (a cancel giving its unit back), so it must not wait for hold rows: the same
-- short lock_timeout as _claim_free, and the caller counts a timeout as nothing reclaimed (the unit is
-- on its way back to stock through that other transaction).
-- A past-due hold's units are units coming back: while anybody waits for them in the drop's line they
-- are the line's (waitlist.sql), so nothing is reclaimed then; the line's lock, shared, keeps a buyer
-- from joining between that look and the reclaim.
CREATE FUNCTION _reclaim_due(drop_id uuid, variant smallint, wanted integer)
RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '20ms'
AS $$
DECLARE
    due_by constant timestamptz := clock_timestamp();  -- a variable, so the index bounds the scan
    reclaimed integer;
BEGIN
    IF wanted < 1 THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(dropstock._line_key(_reclaim_due.drop_id, _reclaim_due.variant));
    IF dropstock._line_waits(_reclaim_due.drop_id, _reclaim_due.variant) THEN
        RETURN 0;
    END IF;
    -- Enough of the oldest past-due holds to make up `wanted` units: each hold while the units of the
    -- holds before it are short of `wanted`. Holds locked but not needed stay as they are (the sweep
    -- ends them once this transaction is over).
    WITH due AS (
        SELECT x.id, x.quantity, x.expires_at FROM dropstock.reservations x
         WHERE x.drop_id = _reclaim_due.drop_id AND x.status = 'reserved' AND x.expires_at <= due_by
           AND x.variant = _reclaim_due.variant
         ORDER BY x.expires_at LIMIT wanted FOR UPDATE SKIP LOCKED
    ), enough AS (
        SELECT d.id FROM (SELECT due.id, sum(due.quantity) OVER (ORDER BY due.expires_at, due.id
                                                                   ROWS UNBOUNDED PRECEDING) - due.quantity AS before
                            FROM due) d
         WHERE d.before < wanted
    ), gone AS (
        UPDATE dropstock.reservations r SET status = 'expired'
          FROM enough WHERE r.id = enough.id
        RETURNING r.quantity
    )
    SELECT coalesce(sum(gone.quantity), 0) INTO reclaimed FROM gone;
    RETURN reclaimed;
END
$$;

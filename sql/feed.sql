-- The stock feed: what the background worker publishes with NOTIFY on channel `dropstock`.
-- reserve_item and purchase never notify: a transaction that notifies takes a cluster-wide lock at
-- commit, which would put every buyer in one queue. What was last published per drop is in
-- `feed_state` (schema.sql).
--
-- Guarantees:
-- - Every sale is announced exactly once: the publication that announces it marks it (feed_seq), in
--   the same transaction as the NOTIFY, so a sale is announced by the first publication whose snapshot
--   sees it committed, and by no other. A sale that committed before another is never announced after it.
-- - `seq` rises by one per notification of a drop, strictly, however many publishers run: one
--   publication at a time (a transaction-level advisory lock), and seq survives restarts.
-- - A tick costs what the changed drops cost. Every function that changes what a notice says (a hold
--   made or ended, a sale, a line joined or left, a drop created) tells the worker which drop at commit
--   (extension/src/wake.rs), and the worker passes the list to _publish_changes, which looks at those
--   drops, at drops whose line moved and at drops with sales to announce, however many other drops
--   hold units. A call by hand, and the worker every 30 s, look at every drop that may have changed:
--   those with live holds, found in the live-hold index (where ended holds leave dead entries until
--   vacuum), and those that held units at their last publication.

-- publish_changes: NOTIFY dropstock, '<json>' for each drop whose stock or buyers changed since its
-- last publication; returns how many notifications it sent.
-- Payload: {"dropId", "availableStock", "totalStock", "seq", "waiting", "lineSeq", "purchases": [{"id",
-- "createdAt", "user": {"username"}}]}, `waiting` being how many buyers wait in the drop's line and
-- `lineSeq` rising by one each time the line moved since the last notice (a buyer waiting needs to
-- ask for their position only then), the purchases being sales not announced before, newest first, at
-- most 10 per notification; more new sales than that go out as several notifications in a row, oldest
-- sales first, each with its own seq and the same stock. A sized drop's payload also has "variants":
-- [[variant, available], ...], the variants whose available units changed since the last publication,
-- by variant number (variant_status gives the labels). Numbers, not labels, keep a notice under
-- PostgreSQL's 8,000-byte limit whatever the labels: 100 variants take at most 1,500 bytes, ten sales
-- at most 4,300 (names of 64 four-byte characters).
-- Drops that ended more than a minute ago are not looked at unless their line moved (a draw's sales
-- come after its end). A line's length is never counted: the moves recorded since the last
-- publication (line_moves) are added to it. Buyers appear by name only: any role that can connect can LISTEN, and a buyer's id is theirs
-- alone.
-- Offers made since the last publication (waitlist.sql) go out on channel `dropstock_inbox`, one
-- notification each, addressed to the buyer's inbox (inbox_of: the hash of a secret only the buyer and
-- the API know) and naming no buyer: {"inbox", "dropId", "expiresAt", "variant", "quantity"}, the
-- variant by label (null on a drop without sizes). Each offer is announced once: the publication that
-- announces it removes it from offers_unsent in the same transaction.
-- The background worker calls it every tick; without the worker, any scheduler can.
CREATE FUNCTION publish_changes()
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN dropstock._publish_changes(NULL, NULL, NULL, true);
END
$$;

-- _publish_changes: publish_changes, told which drops changed since the last publication (`listed`,
-- from the worker's list: extension/src/wake.rs), so that it looks at those instead of every drop that
-- may have changed, and in which of them holds were made (`made_holds`, with when the latest such
-- commit was, `made_at`). NULL lists: not known; look at every drop that may have changed, and count
-- every drop with live holds as one that has just made holds. `walk`: look at every drop that may have
-- changed as well, for changes no commit listed (a prepared transaction commits without the callback).
-- A drop with no unit available in which holds were made since its last publication started is
-- published even when its figures did not move (a past-due hold taken over, or a unit cancelled and
-- taken again within one tick): its buyers changed, and an adapter answering "sold out" by itself
-- (adapter/src/db/sold_out.rs) learns them from the notices. A publication that started after those
-- holds committed (another publisher's) saw them, so a later one does not announce them again.
CREATE FUNCTION _publish_changes(listed uuid[], made_holds uuid[], made_at timestamptz[], walk boolean)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    sales_per_notice constant integer := 10;
    changed record;
    published integer := 0;
    next_seq bigint;
    announced integer;
    sales json;
    sizes json;
    candidates uuid[];
    made_times timestamptz[];
    walked uuid[] := '{}';
    held_before uuid[] := '{}';
    line_moved uuid[];
    offers integer;
BEGIN
    -- One publisher at a time (the worker's tick and a manual call), so seq rises strictly.
    PERFORM pg_advisory_xact_lock(7237970079682749796);  -- 'dropfeed'
    -- The lines' moves since the last publication, added to their lengths; a drop whose line moved is
    -- published (pending) even if nothing else changed.
    WITH gone AS (
        DELETE FROM dropstock.line_moves m RETURNING m.drop_id, m.delta
    ), moved AS (
        SELECT gone.drop_id, sum(gone.delta)::integer AS delta FROM gone GROUP BY gone.drop_id
    ), marked AS (
        UPDATE dropstock.feed_state f
           SET waiting = f.waiting + moved.delta, line_seq = f.line_seq + 1, pending = true
          FROM moved WHERE f.drop_id = moved.drop_id
        RETURNING f.drop_id
    )
    SELECT coalesce(array_agg(marked.drop_id), '{}') INTO line_moved FROM marked;
    -- The drops worth a look, found from small indexes only: the listed drops, drops whose line moved,
    -- and drops with sales to announce. Without the list, or told to walk, also every drop with live
    -- holds (skipping from one drop to the next in the live-hold index: one probe per such drop, not
    -- one per hold, but every dead entry of an ended hold is stepped over until vacuum removes it), and
    -- every drop that held units at its last publication or was never published.
    IF listed IS NULL OR walk THEN
        WITH RECURSIVE live(drop_id) AS (
            (SELECT r.drop_id FROM dropstock.reservations r WHERE r.status = 'reserved'
              ORDER BY r.drop_id LIMIT 1)
            UNION ALL
            SELECT (SELECT r.drop_id FROM dropstock.reservations r
                     WHERE r.status = 'reserved' AND r.drop_id > live.drop_id
                     ORDER BY r.drop_id LIMIT 1)
              FROM live WHERE live.drop_id IS NOT NULL
        )
        SELECT coalesce(array_agg(l.drop_id), '{}') INTO walked FROM live l WHERE l.drop_id IS NOT NULL;
        SELECT coalesce(array_agg(f.drop_id), '{}') INTO held_before
          FROM dropstock.feed_state f WHERE f.held > 0 OR f.pending;
    END IF;
    -- Without the list, any drop with live holds may have just gained one.
    IF made_holds IS NULL THEN
        made_holds := walked;
        made_at := array_fill('infinity'::timestamptz, ARRAY[cardinality(walked)]);
    END IF;
    SELECT coalesce(array_agg(c.drop_id ORDER BY c.drop_id), '{}'), coalesce(array_agg(c.holds_at ORDER BY c.drop_id), '{}')
      INTO candidates, made_times
      FROM (SELECT u.drop_id, max(u.holds_at) AS holds_at
              FROM (SELECT l.drop_id, NULL::timestamptz AS holds_at FROM unnest(listed) AS l(drop_id)
                    UNION ALL
                    SELECT h.drop_id, h.holds_at FROM unnest(made_holds, made_at) AS h(drop_id, holds_at)
                    UNION ALL
                    SELECT w.drop_id, NULL::timestamptz FROM unnest(walked) AS w(drop_id)
                    UNION ALL
                    SELECT h.drop_id, NULL::timestamptz FROM unnest(held_before) AS h(drop_id)
                    UNION ALL
                    SELECT m.drop_id, NULL::timestamptz FROM unnest(line_moved) AS m(drop_id)
                    UNION ALL
                    SELECT DISTINCT p.drop_id, NULL::timestamptz FROM dropstock.purchases p WHERE p.feed_seq IS NULL) u
             GROUP BY u.drop_id) c;

    -- Then each of them on its own, by primary key. OFFSET 0 keeps each lateral look-up a subquery run
    -- per candidate: flattened into a join, the planner may turn it around and read every drop. It did,
    -- on statistics taken before 10,000 drops were created (one drop in the candidates' place, the
    -- slots' sums computed once): a tick with nothing to publish took 9 ms instead of 1.
    FOR changed IN
        SELECT d.id, d.total_stock, st.available, st.sold, f.drop_id IS NULL OR f.pending AS pending,
               coalesce(f.seq, 0) AS seq, f.available AS last_available, f.sold AS last_sold,
               CASE WHEN d.sized THEN
                   ARRAY(SELECT sum(s.available)::integer FROM dropstock.stock_slots s
                          WHERE s.drop_id = c.drop_id GROUP BY s.variant ORDER BY s.variant)
               END AS variants, f.variants AS last_variants,
               EXISTS (SELECT FROM dropstock.purchases p WHERE p.drop_id = d.id AND p.feed_seq IS NULL) AS new_sales,
               coalesce(f.waiting, 0) AS waiting, coalesce(f.line_seq, 0) AS line_seq,
               coalesce(c.holds_at > coalesce(f.published_at, '-infinity'), false) AS new_holds
          FROM unnest(candidates, made_times) AS c(drop_id, holds_at)
         CROSS JOIN LATERAL (SELECT * FROM dropstock.drops x WHERE x.id = c.drop_id OFFSET 0) d
          LEFT JOIN LATERAL (SELECT * FROM dropstock.feed_state y WHERE y.drop_id = c.drop_id OFFSET 0) f ON true
         CROSS JOIN LATERAL (SELECT sum(s.available)::integer AS available, sum(s.sold)::integer AS sold
                               FROM dropstock.stock_slots s WHERE s.drop_id = c.drop_id) st
         WHERE d.ends_at IS NULL OR d.ends_at > now() - interval '1 minute'
            OR f.pending
         ORDER BY c.drop_id
    LOOP
        CONTINUE WHEN NOT (changed.pending OR changed.new_sales
                           OR changed.last_available <> changed.available OR changed.last_sold <> changed.sold
                           OR changed.variants IS DISTINCT FROM changed.last_variants
                           OR (changed.new_holds AND changed.available = 0));
        -- Units can move between sizes with the total unchanged (a cancel and a hold in one tick).
        IF changed.variants IS NOT NULL THEN
            SELECT coalesce(json_agg(json_build_array(x.variant, x.available) ORDER BY x.variant), '[]'::json)
              INTO sizes
              FROM unnest(changed.variants) WITH ORDINALITY AS x(available, variant)
             WHERE changed.pending OR x.available IS DISTINCT FROM changed.last_variants[x.variant];
        END IF;
        next_seq := changed.seq;
        LOOP
            next_seq := next_seq + 1;
            WITH batch AS (
                SELECT p.id FROM dropstock.purchases p
                 WHERE p.drop_id = changed.id AND p.feed_seq IS NULL
                 ORDER BY p.created_at, p.id
                 LIMIT sales_per_notice
            ), marked AS (
                UPDATE dropstock.purchases p SET feed_seq = next_seq
                  FROM batch WHERE p.id = batch.id
                RETURNING p.id, p.created_at, p.user_id
            )
            SELECT count(*),
                   coalesce(json_agg(json_build_object(
                                'id', m.id, 'createdAt', m.created_at,
                                'user', json_build_object('username', u.username))
                            ORDER BY m.created_at DESC, m.id DESC), '[]'::json)
              INTO announced, sales
              FROM marked m JOIN dropstock.users u ON u.id = m.user_id;
            IF changed.variants IS NULL THEN
                PERFORM pg_notify('dropstock', json_build_object(
                    'dropId', changed.id,
                    'availableStock', changed.available,
                    'totalStock', changed.total_stock,
                    'seq', next_seq,
                    'waiting', changed.waiting,
                    'lineSeq', changed.line_seq,
                    'purchases', sales)::text);
            ELSE
                PERFORM pg_notify('dropstock', json_build_object(
                    'dropId', changed.id,
                    'availableStock', changed.available,
                    'totalStock', changed.total_stock,
                    'seq', next_seq,
                    'waiting', changed.waiting,
                    'lineSeq', changed.line_seq,
                    'purchases', sales,
                    'variants', sizes)::text);
            END IF;
            published := published + 1;
            EXIT WHEN announced < sales_per_notice
                   OR NOT EXISTS (SELECT FROM dropstock.purchases p
                                   WHERE p.drop_id = changed.id AND p.feed_seq IS NULL);
        END LOOP;
        INSERT INTO dropstock.feed_state AS f (drop_id, seq, available, sold, held, pending, published_at, variants,
                                               waiting, line_seq)
        VALUES (changed.id, next_seq, changed.available, changed.sold,
                changed.total_stock - changed.available - changed.sold, false, now(), changed.variants,
                changed.waiting, changed.line_seq)
        ON CONFLICT (drop_id) DO UPDATE
           SET seq = excluded.seq, available = excluded.available, sold = excluded.sold,
               held = excluded.held, pending = false, published_at = excluded.published_at,
               variants = excluded.variants;
    END LOOP;

    -- The offers, each to its buyer's inbox.
    WITH sent AS (
        DELETE FROM dropstock.offers_unsent o RETURNING o.reservation_id, o.drop_id, o.user_id
    )
    SELECT count(pg_notify('dropstock_inbox', json_build_object(
               'inbox', encode(sha256(convert_to(u.inbox_key, 'UTF8')), 'hex'),
               'dropId', sent.drop_id,
               'expiresAt', r.expires_at,
               'variant', v.label,
               'quantity', r.quantity)::text))
      INTO offers
      FROM sent
      JOIN dropstock.users u ON u.id = sent.user_id
      JOIN dropstock.reservations r ON r.id = sent.reservation_id
      LEFT JOIN dropstock.variants v ON v.drop_id = r.drop_id AND v.variant = r.variant;
    published := published + offers;
    RETURN published;
END
$$;

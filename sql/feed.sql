-- The stock feed: what the background worker publishes with NOTIFY on channel `dropstock`.
-- One notification per drop whose stock or buyers changed since the last publication, with a per-drop
-- sequence number that survives restarts. reserve_item and purchase never notify: a transaction that
-- notifies takes a cluster-wide lock at commit, which would put every buyer in one queue.

-- What was last published per drop. Written only by publish_changes().
CREATE TABLE feed_state (
    drop_id   uuid PRIMARY KEY REFERENCES drops (id) ON DELETE CASCADE,
    seq       bigint NOT NULL,
    available integer NOT NULL,
    sold      integer NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

-- publish_changes: NOTIFY dropstock, '<json>' once per changed drop; returns how many it published.
-- Payload: {"dropId", "availableStock", "totalStock", "seq", "purchases": [{"id", "createdAt",
-- "user": {"id", "username"}}]}, the purchases being the new sales since the last publication (at most
-- 3, newest first); well under 2 kB. Drops that have ended more than a minute ago, and drops that are
-- sold out with no hold left (nothing can change any more), are not looked at.
-- The background worker calls it every tick; without the worker, any scheduler can.
CREATE FUNCTION publish_changes()
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    changed record;
    published integer := 0;
    next_seq bigint;
BEGIN
    FOR changed IN
        SELECT d.id, d.total_stock, st.available, st.sold, f.seq, f.sold AS last_sold
          FROM dropstock.drops d
          LEFT JOIN dropstock.feed_state f ON f.drop_id = d.id
         CROSS JOIN LATERAL (SELECT sum(s.available)::integer AS available, sum(s.sold)::integer AS sold
                               FROM dropstock.stock_slots s WHERE s.drop_id = d.id) st
         WHERE (d.ends_at IS NULL OR d.ends_at > now() - interval '1 minute')
           AND (f.drop_id IS NULL OR f.sold < d.total_stock)
           AND (f.drop_id IS NULL OR f.available <> st.available OR f.sold <> st.sold)
         ORDER BY d.id
    LOOP
        next_seq := coalesce(changed.seq, 0) + 1;
        INSERT INTO dropstock.feed_state AS f (drop_id, seq, available, sold, published_at)
        VALUES (changed.id, next_seq, changed.available, changed.sold, now())
        ON CONFLICT (drop_id) DO UPDATE
           SET seq = excluded.seq, available = excluded.available, sold = excluded.sold,
               published_at = excluded.published_at;
        PERFORM pg_notify('dropstock', json_build_object(
            'dropId', changed.id,
            'availableStock', changed.available,
            'totalStock', changed.total_stock,
            'seq', next_seq,
            'purchases', coalesce((
                SELECT json_agg(json_build_object(
                           'id', p.id, 'createdAt', p.created_at,
                           'user', json_build_object('id', u.id, 'username', u.username))
                         ORDER BY p.created_at DESC, p.id)
                  FROM (SELECT * FROM dropstock.purchases p
                         WHERE p.drop_id = changed.id
                         ORDER BY p.created_at DESC, p.id
                         LIMIT least(3, changed.sold - coalesce(changed.last_sold, changed.sold))) p
                  JOIN dropstock.users u ON u.id = p.user_id), '[]'::json)
        )::text);
        published := published + 1;
    END LOOP;
    RETURN published;
END
$$;

-- The waiting list: when a drop (or a size of it) is sold out or fully held, buyers join its line, and
-- every unit that comes back (a hold running out, a cancel, an offer lapsing) goes to the first buyer in
-- line who wants it, as a hold of their own (an offer), made in the transaction that frees the unit.
--
-- The rule that makes the line fair: units never go back to free stock while someone waits for them, and
-- nobody joins while units they could reserve are free. Two things keep it true under concurrency:
-- - Every path that gives units back does it through _give_back, which first takes the line lock of
--   the (drop, variant) in shared mode, then serves the line, then puts only what is left into stock.
--   Givers-back do not wait for each other.
-- - join_waitlist takes the same lock in exclusive mode before it looks at free stock: it waits for
--   givers-back that have started to commit (and then sees their units, and is told to reserve them),
--   and a giver-back that starts after it waits for the join to commit (and then serves the joiner).
-- reserve_item refuses a buyer when anybody waits for the units they ask for (DS020), or when they are
-- in the line themselves (DS025), so it never touches the line's rows; the reclaim of past-due holds
-- (stock.sql) looks at the line under the shared lock too.
--
-- Lock order (extending stock.sql's): buyer locks, hold rows, line locks (variants in ascending order),
-- line rows, slot rows. Line rows are taken with SKIP LOCKED by the serving side, so a serve never waits
-- for a buyer who is leaving, and a buyer's own calls (leave) hold nothing a serve could be waiting for.

-- _labels_to_variants: the variant numbers of a drop's size labels, sorted and distinct, or a refusal:
-- DS012 no size named on a sized drop, DS013 a size the drop does not have. A drop without sizes takes
-- no labels and answers {0}.
CREATE FUNCTION _labels_to_variants(d drops, labels text[])
RETURNS smallint[]
LANGUAGE plpgsql
AS $$
DECLARE
    numbers smallint[];
    unknown text;
BEGIN
    labels := ARRAY(SELECT btrim(x) FROM unnest(labels) AS x WHERE x IS NOT NULL);
    IF NOT d.sized THEN
        IF cardinality(labels) > 0 THEN
            RAISE EXCEPTION 'drop "%" has no sizes, so no size "%"', d.name, labels[1] USING ERRCODE = 'DS013';
        END IF;
        RETURN '{0}';
    END IF;
    IF cardinality(labels) = 0 THEN
        RAISE EXCEPTION 'choose a size of drop "%"', d.name USING ERRCODE = 'DS012';
    END IF;
    SELECT x INTO unknown FROM unnest(labels) AS x
     WHERE NOT EXISTS (SELECT FROM dropstock.variants v WHERE v.drop_id = d.id AND v.variant > 0 AND v.label = x)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'drop "%" has no size "%"', d.name, unknown USING ERRCODE = 'DS013';
    END IF;
    numbers := ARRAY(SELECT DISTINCT v.variant FROM dropstock.variants v
                      WHERE v.drop_id = d.id AND v.variant > 0 AND v.label = ANY (labels) ORDER BY 1);
    RETURN numbers;
END
$$;

-- _variants_to_labels: the labels of variant numbers (NULL for a drop without sizes).
CREATE FUNCTION _variants_to_labels(drop_id uuid, numbers smallint[])
RETURNS text[]
LANGUAGE sql
STABLE
AS $$
    SELECT CASE WHEN numbers = '{0}' THEN NULL
                ELSE ARRAY(SELECT v.label FROM dropstock.variants v
                            WHERE v.drop_id = _variants_to_labels.drop_id AND v.variant = ANY (numbers)
                            ORDER BY v.variant) END
$$;

-- _serve_line: give `units` units of the variant that just came back to the line of the drop, first in
-- line first; returns how many nobody in line wanted (the caller puts them into stock). Whoever wants
-- this variant and no other size already being kept for them is served: all their units at once as an
-- offer, or, when fewer came back than they still need, the units are kept for them and nobody behind
-- them gets any. A buyer who meanwhile got a hold another way, or whom the per-buyer limit now stops, is
-- passed over (their place ends, and what was kept for them goes on down the line).
-- The caller holds the line lock of (drop, variant) in shared mode (_give_back, run_draw).
-- Set-based: each pass locks the first `units` buyers in line, judges them in one statement, decides in
-- place order who is served, passed over or kept for (arithmetic over arrays, no statement per buyer),
-- then ends their places, makes their holds and records the offers in three statements. Ten thousand
-- offers falling due at once are the worker's busiest moment on drop day; a statement per buyer made it
-- cost a seventh of a millisecond per offer.
CREATE FUNCTION _serve_line(line_drop uuid, line_variant smallint, units integer)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    d dropstock.drops;
    buyers uuid[];
    quantities integer[];
    kepts integer[];
    eligible boolean[];
    looked integer;
    need integer;
    ended uuid[];       -- places that end this pass: served or passed over
    ends integer;
    offered uuid[];     -- served, with the units their holds take in offered_units
    offered_units integer[];
    offers integer;
    kept_for uuid;      -- the buyer the remaining units are kept for, if any
    kept_units integer;
    back integer;       -- units of buyers passed over after all, at the insert
    left_line integer := 0;
BEGIN
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = line_drop;
    WHILE units > 0 LOOP
        -- At most `units` buyers can be served by `units` units; rows others are deciding right now
        -- (a buyer leaving, another serve) are skipped rather than waited for. Judged while locked: the
        -- limit (checked when they joined; what they bought cannot change while they wait, as they hold
        -- nothing to buy, but it costs one probe) and whether they hold units of the drop already.
        SELECT coalesce(array_agg(c.user_id ORDER BY c.place), '{}'), array_agg(c.quantity ORDER BY c.place),
               array_agg(c.kept ORDER BY c.place),
               array_agg((SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p
                           WHERE p.user_id = c.user_id AND p.drop_id = line_drop) + c.quantity <= d.per_user_limit
                         AND NOT EXISTS (SELECT FROM dropstock.reservations r
                                          WHERE r.drop_id = line_drop AND r.user_id = c.user_id
                                            AND r.status = 'reserved')
                         ORDER BY c.place)
          INTO buyers, quantities, kepts, eligible
          FROM (SELECT w.user_id, w.quantity, w.kept, w.place
                  FROM dropstock.waitlist w
                 WHERE w.drop_id = line_drop AND line_variant = ANY (w.variants)  -- as _line_waits
                   AND (w.kept_variant IS NULL OR w.kept_variant = line_variant)
                 ORDER BY w.place
                 LIMIT units
                   FOR UPDATE SKIP LOCKED) c;
        looked := cardinality(buyers);
        EXIT WHEN looked = 0;
        -- Element assignments, not `||`: each append would copy the array.
        ended := '{}';
        ends := 0;
        offered := '{}';
        offered_units := '{}';
        offers := 0;
        kept_for := NULL;
        FOR i IN 1 .. looked LOOP
            EXIT WHEN units = 0;
            IF NOT eligible[i] THEN
                ends := ends + 1;
                ended[ends] := buyers[i];
                units := units + kepts[i];  -- passed over: what was kept for them goes on
                CONTINUE;
            END IF;
            need := quantities[i] - kepts[i];
            IF need > units THEN
                kept_for := buyers[i];
                kept_units := units;
                units := 0;
                EXIT;
            END IF;
            ends := ends + 1;
            ended[ends] := buyers[i];
            offers := offers + 1;
            offered[offers] := buyers[i];
            offered_units[offers] := quantities[i];
            units := units - need;
        END LOOP;
        IF kept_for IS NOT NULL THEN
            UPDATE dropstock.waitlist w SET kept = w.kept + kept_units, kept_variant = line_variant
             WHERE w.drop_id = line_drop AND w.user_id = kept_for;
        END IF;
        IF ends > 0 THEN
            DELETE FROM dropstock.waitlist w WHERE w.drop_id = line_drop AND w.user_id = ANY (ended);
            left_line := left_line + ends;
        END IF;
        IF offers > 0 THEN
            -- A buyer who got a hold another way since the judgement (their reserve committed in
            -- between) is passed over after all: all their units go on, those kept for them and those
            -- they were to take.
            WITH wanted AS (
                SELECT o.user_id, o.quantity FROM unnest(offered, offered_units) AS o(user_id, quantity)
            ), held AS (
                INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at, variant, quantity, offered)
                SELECT line_drop, wanted.user_id, clock_timestamp() + make_interval(secs => d.hold_seconds),
                       line_variant, wanted.quantity, true
                  FROM wanted
                ON CONFLICT (drop_id, user_id) WHERE status = 'reserved' DO NOTHING
                RETURNING r.id, r.user_id
            ), sent AS (
                INSERT INTO dropstock.offers_unsent (reservation_id, drop_id, user_id)
                SELECT held.id, line_drop, held.user_id FROM held
            )
            SELECT coalesce(sum(wanted.quantity) FILTER (WHERE held.user_id IS NULL), 0)::integer
              INTO back
              FROM wanted LEFT JOIN held ON held.user_id = wanted.user_id;
            PERFORM dropstock._tell_worker_at_commit(line_drop, made_holds => true);  -- new holds: the worker's list (extension/src/wake.rs)
            units := units + back;
        END IF;
    END LOOP;
    IF left_line > 0 THEN
        INSERT INTO dropstock.line_moves (drop_id, delta) VALUES (line_drop, -left_line);
    END IF;
    RETURN units;
END
$$;

-- _give_back: `units` units of the drop's variant came back (a hold ended without a sale, an offer
-- lapsed, a buyer left the line with units kept for them): serve the line, then put the rest into
-- stock. `from_buyers` are the buyers whose holds ended: when others were waiting, each gets the drop's
-- cooldown. Returns whether anybody was waiting.
CREATE FUNCTION _give_back(drop_id uuid, variant smallint, units integer, from_buyers uuid[] DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    left_over integer := units;
    waiting boolean;
BEGIN
    IF units < 1 THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(dropstock._line_key(_give_back.drop_id, _give_back.variant));
    waiting := dropstock._line_waits(_give_back.drop_id, _give_back.variant);
    IF waiting THEN
        left_over := dropstock._serve_line(_give_back.drop_id, _give_back.variant, units);
        IF cardinality(from_buyers) > 0 THEN
            INSERT INTO dropstock.cooldowns AS c (drop_id, user_id, until)
            SELECT _give_back.drop_id, b,
                   clock_timestamp() + make_interval(secs => coalesce(d.cooldown_seconds, d.hold_seconds))
              FROM (SELECT DISTINCT b FROM unnest(from_buyers) AS b) AS x(b)
             CROSS JOIN (SELECT * FROM dropstock.drops y WHERE y.id = _give_back.drop_id) d
            ON CONFLICT ON CONSTRAINT cooldowns_pkey DO UPDATE SET until = greatest(c.until, excluded.until);
        END IF;
    END IF;
    IF left_over > 0 THEN
        PERFORM dropstock._adjust_stock(_give_back.drop_id, _give_back.variant, left_over, 0);
    END IF;
    PERFORM dropstock._tell_worker_at_commit(_give_back.drop_id);  -- the feed shows it within milliseconds (extension/src/wake.rs)
    RETURN waiting;
END
$$;

-- _waitlist_answer: a buyer's place as join_waitlist answers it.
CREATE FUNCTION _waitlist_answer(drop_id uuid, user_id uuid, fresh boolean)
RETURNS waitlist_entry
LANGUAGE sql
STABLE
AS $$
    SELECT ROW(w.drop_id, w.user_id,
               (SELECT count(*)::integer FROM dropstock.waitlist a WHERE a.drop_id = w.drop_id AND a.place <= w.place),
               dropstock._variants_to_labels(w.drop_id, w.variants), w.quantity, w.joined_at,
               _waitlist_answer.fresh)::dropstock.waitlist_entry
      FROM dropstock.waitlist w
     WHERE w.drop_id = _waitlist_answer.drop_id AND w.user_id = _waitlist_answer.user_id
$$;

-- _entry_drop: the drop a buyer asks to wait for or to enter the draw of, once the arguments those two
-- share are checked: 22023 for a missing id, a quantity outside 1..10000 or over 100 sizes; DS001 for an
-- unknown drop.
CREATE FUNCTION _entry_drop(drop_id uuid, user_id uuid, variants text[], quantity integer)
RETURNS drops
LANGUAGE plpgsql
AS $$
DECLARE
    d dropstock.drops;
BEGIN
    IF _entry_drop.drop_id IS NULL OR _entry_drop.user_id IS NULL THEN
        RAISE EXCEPTION 'drop id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF _entry_drop.quantity IS NULL OR _entry_drop.quantity < 1 OR _entry_drop.quantity > 10000 THEN
        RAISE EXCEPTION 'quantity must be from 1 to 10000, got %', coalesce(_entry_drop.quantity::text, 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(_entry_drop.variants) > 100 THEN
        RAISE EXCEPTION 'at most 100 sizes, got %', cardinality(_entry_drop.variants)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO d FROM dropstock.drops x WHERE x.id = _entry_drop.drop_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'drop % does not exist', _entry_drop.drop_id USING ERRCODE = 'DS001';
    END IF;
    RETURN d;
END
$$;

-- join_waitlist: take a place in the drop's line, waiting for `quantity` units of any of the sizes
-- named (one size as `variant`, several as `variants`; none on a drop without sizes). Joining again
-- returns the same place, unchanged (fresh = false). The first units of one of those sizes to come back
-- are offered as a hold of the drop's hold_seconds (see buyer_holds and the inbox in feed.sql).
-- Refusals: DS001 unknown drop, DS002 unknown buyer, DS010 not started, DS011 ended (a race drop),
-- DS012 no size named on a sized drop, DS013 no such size, DS014 a draw not drawn yet (enter it),
-- DS021 per-buyer limit (units bought + quantity), DS023 units of those sizes are free (reserve them),
-- DS024 the buyer holds a live hold on the drop; 22023 for a missing argument or a quantity outside
-- 1..10000.
CREATE FUNCTION join_waitlist(drop_id uuid, user_id uuid, variants text[], quantity integer DEFAULT 1)
RETURNS waitlist_entry
LANGUAGE plpgsql
AS $$
DECLARE
    d dropstock.drops;
    numbers smallint[];
    free integer;
    bought integer;
    v smallint;
BEGIN
    d := dropstock._entry_drop(join_waitlist.drop_id, join_waitlist.user_id, join_waitlist.variants,
                               join_waitlist.quantity);
    IF clock_timestamp() < d.starts_at THEN
        RAISE EXCEPTION 'drop "%" has not started yet', d.name USING ERRCODE = 'DS010',
              DETAIL = format('It opens at %s.', d.starts_at);
    END IF;
    IF d.mode = 'draw' AND NOT EXISTS (SELECT FROM dropstock.draws w WHERE w.drop_id = d.id) THEN
        RAISE EXCEPTION 'drop "%" is a draw that has not been drawn yet', d.name USING ERRCODE = 'DS014',
              HINT = 'Enter the draw.';
    END IF;
    IF d.mode = 'race' AND d.ends_at IS NOT NULL AND clock_timestamp() >= d.ends_at THEN
        RAISE EXCEPTION 'drop "%" has ended', d.name USING ERRCODE = 'DS011',
              DETAIL = format('It closed at %s.', d.ends_at);
    END IF;
    numbers := dropstock._labels_to_variants(d, join_waitlist.variants);

    PERFORM dropstock._lock_buyers(d.id, ARRAY[join_waitlist.user_id]);
    IF NOT EXISTS (SELECT FROM dropstock.users u WHERE u.id = join_waitlist.user_id) THEN
        RAISE EXCEPTION 'user % does not exist', join_waitlist.user_id USING ERRCODE = 'DS002';
    END IF;
    IF EXISTS (SELECT FROM dropstock.waitlist w WHERE w.drop_id = d.id AND w.user_id = join_waitlist.user_id) THEN
        RETURN dropstock._waitlist_answer(d.id, join_waitlist.user_id, false);
    END IF;
    IF EXISTS (SELECT FROM dropstock.reservations r
                WHERE r.drop_id = d.id AND r.user_id = join_waitlist.user_id AND r.status = 'reserved'
                  AND r.expires_at > clock_timestamp()) THEN
        RAISE EXCEPTION 'you already hold units of drop "%"', d.name USING ERRCODE = 'DS024',
              HINT = 'Buy or cancel that hold first.';
    END IF;
    bought := (SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p
                WHERE p.user_id = join_waitlist.user_id AND p.drop_id = d.id);
    IF bought + join_waitlist.quantity > d.per_user_limit THEN
        RAISE EXCEPTION '%', CASE WHEN bought >= d.per_user_limit
                                  THEN format('limit of %s per buyer reached for drop "%s"', d.per_user_limit, d.name)
                                  ELSE format('limit of %s per buyer for drop "%s": %s more at most, not %s',
                                              d.per_user_limit, d.name, d.per_user_limit - bought, join_waitlist.quantity) END
              USING ERRCODE = 'DS021';
    END IF;

    -- The line locks, exclusive, in ascending variant order; then free stock as committed by every
    -- giver-back that started before (see the top of this file).
    FOREACH v IN ARRAY numbers LOOP
        PERFORM pg_advisory_xact_lock(dropstock._line_key(d.id, v));
    END LOOP;
    free := (SELECT coalesce(sum(s.available), 0) FROM dropstock.stock_slots s
              WHERE s.drop_id = d.id AND s.variant = ANY (numbers));
    IF free > 0 THEN
        RAISE EXCEPTION '%', CASE WHEN numbers = '{0}' THEN format('%s of drop "%s" left: reserve instead of waiting', free, d.name)
                                  ELSE format('%s of the sizes asked for of drop "%s" left: reserve instead of waiting', free, d.name) END
              USING ERRCODE = 'DS023', HINT = 'Call reserve_item.';
    END IF;
    INSERT INTO dropstock.waitlist (drop_id, user_id, variants, quantity)
    VALUES (d.id, join_waitlist.user_id, numbers, join_waitlist.quantity);
    INSERT INTO dropstock.line_moves (drop_id, delta) VALUES (d.id, 1);
    PERFORM dropstock._tell_worker_at_commit(d.id);  -- the feed shows it within milliseconds (extension/src/wake.rs)
    -- A new place is the last: its position is the line's length, known without counting the line
    -- (which would make each join cost as much as the line is long).
    RETURN ROW(d.id, join_waitlist.user_id, dropstock._line_length(d.id),
               dropstock._variants_to_labels(d.id, numbers), join_waitlist.quantity, now(), true)::dropstock.waitlist_entry;
END
$$;

-- join_waitlist for one size (or none, on a drop without sizes).
CREATE FUNCTION join_waitlist(drop_id uuid, user_id uuid, variant text DEFAULT NULL, quantity integer DEFAULT 1)
RETURNS waitlist_entry
LANGUAGE sql
AS $$
    SELECT dropstock.join_waitlist(drop_id, user_id, CASE WHEN variant IS NULL THEN '{}'::text[] ELSE ARRAY[variant] END,
                                   quantity)
$$;

-- leave_waitlist: give up the buyer's place in the drop's line; true when they had one. Units kept for
-- them go on down the line. An offer already made stays theirs (cancel it to give it back).
CREATE FUNCTION leave_waitlist(drop_id uuid, user_id uuid)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    gone record;
BEGIN
    IF leave_waitlist.drop_id IS NULL OR leave_waitlist.user_id IS NULL THEN
        RAISE EXCEPTION 'drop id and user id are both required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM dropstock._lock_buyers(leave_waitlist.drop_id, ARRAY[leave_waitlist.user_id]);
    DELETE FROM dropstock.waitlist w WHERE w.drop_id = leave_waitlist.drop_id AND w.user_id = leave_waitlist.user_id
    RETURNING w.kept, w.kept_variant INTO gone;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO dropstock.line_moves (drop_id, delta) VALUES (leave_waitlist.drop_id, -1);
    IF gone.kept > 0 THEN
        PERFORM dropstock._give_back(leave_waitlist.drop_id, gone.kept_variant, gone.kept);
    END IF;
    PERFORM dropstock._tell_worker_at_commit(leave_waitlist.drop_id);  -- the feed shows it within milliseconds (extension/src/wake.rs)
    RETURN true;
END
$$;

-- waitlist_position: the buyer's position in the drop's line (1: next), or NULL when not waiting.
CREATE FUNCTION waitlist_position(drop_id uuid, user_id uuid)
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT (SELECT count(*)::integer FROM dropstock.waitlist a WHERE a.drop_id = w.drop_id AND a.place <= w.place)
      FROM dropstock.waitlist w
     WHERE w.drop_id = waitlist_position.drop_id AND w.user_id = waitlist_position.user_id
$$;

-- waitlist_length: how many buyers wait on the drop.
CREATE FUNCTION waitlist_length(drop_id uuid)
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT dropstock._line_length(waitlist_length.drop_id)
$$;

-- buyer_holds: the buyer's live holds (reserved, not past due), newest first, offers among them. Looked
-- up drop by drop in the one-live-hold index, which leads with the drop.
CREATE FUNCTION buyer_holds(user_id uuid)
RETURNS TABLE (reservation_id uuid, drop_id uuid, drop_name text, status text, expires_at timestamptz,
               created_at timestamptz, variant text, quantity integer, offered boolean)
LANGUAGE sql
STABLE
AS $$
    SELECT r.id, d.id, d.name, r.status::text, r.expires_at, r.created_at, v.label, r.quantity, r.offered
      FROM dropstock.drops d
     CROSS JOIN LATERAL (SELECT * FROM dropstock.reservations x
                          WHERE x.drop_id = d.id AND x.user_id = buyer_holds.user_id AND x.status = 'reserved'
                            AND x.expires_at > clock_timestamp()) r
      LEFT JOIN dropstock.variants v ON v.drop_id = d.id AND v.variant = r.variant
     ORDER BY r.created_at DESC, r.id
$$;

-- inbox_of: the public name of a buyer's inbox (the SHA-256 of their secret inbox key, in hex), which
-- the feed's offer notices carry instead of their id; NULL for an unknown buyer.
CREATE FUNCTION inbox_of(user_id uuid)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT encode(sha256(convert_to(u.inbox_key, 'UTF8')), 'hex') FROM dropstock.users u WHERE u.id = inbox_of.user_id
$$;

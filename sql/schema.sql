-- dropstock schema: buyers, drops, striped stock, holds and purchases.
-- Loaded first by the extension (extension/src/schema.rs); every function file builds on these tables.

CREATE TYPE reservation_status AS ENUM ('reserved', 'purchased', 'expired', 'cancelled');

CREATE TABLE users (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username   text NOT NULL UNIQUE CHECK (length(btrim(username)) BETWEEN 1 AND 64),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The buyer's secret for their inbox (their own offers in the feed): returned by create_user only,
    -- never published. Two random UUIDs' hex, 244 random bits. The inbox's public name is its SHA-256
    -- (inbox_of, waitlist.sql), so the feed can address a buyer without naming them.
    inbox_key  text NOT NULL DEFAULT (replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''))
);

CREATE TABLE drops (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name           text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    price          numeric(12, 2) NOT NULL CHECK (price >= 0),
    total_stock    integer NOT NULL CHECK (total_stock > 0),
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz CHECK (ends_at > starts_at),
    hold_seconds   integer NOT NULL DEFAULT 60 CHECK (hold_seconds >= 1),
    per_user_limit integer NOT NULL DEFAULT 1 CHECK (per_user_limit >= 1),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Sold by size: a buyer must name a variant. Read with the drop, so a drop without sizes finds its
    -- one implicit variant without a look-up.
    sized          boolean NOT NULL DEFAULT false,
    -- How many times a buyer may extend one hold by hold_seconds (extend_hold); 0: never.
    max_extensions integer NOT NULL DEFAULT 0 CHECK (max_extensions BETWEEN 0 AND 100),
    -- 'race': first come, first served (reserve_item). 'draw': buyers enter between starts_at and ends_at
    -- and the draw orders them (draw.sql).
    mode           text NOT NULL DEFAULT 'race' CHECK (mode IN ('race', 'draw')),
    -- How long a buyer whose hold ended while others were waiting may not reserve the drop (NULL:
    -- hold_seconds).
    cooldown_seconds integer CHECK (cooldown_seconds BETWEEN 0 AND 86400)
);
-- The draws the worker must run: few rows (draw drops only).
CREATE INDEX drops_draws ON drops (ends_at) WHERE mode = 'draw';

-- A drop's variants (sizes), each with its own stock. A drop without sizes has one implicit variant,
-- number 0 with no label, so every stock path is the same for both kinds; a sized drop's variants are
-- numbered from 1 in the order `variant_status` lists them. Nothing here changes after create_drop.
CREATE TABLE variants (
    drop_id     uuid NOT NULL REFERENCES drops (id) ON DELETE CASCADE,
    variant     smallint NOT NULL CHECK (variant BETWEEN 0 AND 100),
    label       text CHECK (length(label) BETWEEN 1 AND 32),
    total_stock integer NOT NULL CHECK (total_stock > 0),
    PRIMARY KEY (drop_id, variant),
    UNIQUE (drop_id, label)
);

-- Each variant's stock is striped over up to 64 slot rows. A reserver claims any slot it can lock without
-- waiting (FOR UPDATE SKIP LOCKED), so concurrent buyers of one drop commit side by side instead of
-- queueing behind one row lock. `sold` is striped the same way so purchases stay off a hot row too.
-- Exact counts are a sum over a variant's slots (at most 64 rows), or over the drop's for its totals:
--     available = sum(available), sold = sum(sold), held = total_stock - available - sold.
-- drop_id leads the key so that a drop's totals are one range of the index, whatever its variants.
CREATE TABLE stock_slots (
    drop_id   uuid NOT NULL REFERENCES drops (id) ON DELETE CASCADE,
    variant   smallint NOT NULL DEFAULT 0,
    slot      smallint NOT NULL,
    available integer NOT NULL CHECK (available >= 0),
    sold      integer NOT NULL DEFAULT 0 CHECK (sold >= 0),
    PRIMARY KEY (drop_id, variant, slot)
) WITH (fillfactor = 50); -- room for HOT updates: slot rows are rewritten on every claim

-- Holds and purchases carry drop_id and user_id without foreign keys on purpose: a foreign-key check
-- share-locks the referenced row, and thousands of holds inserted at once against one hot drop row would
-- pile up multixact locks on it. The API functions check that the drop and the buyer exist instead.
CREATE TABLE reservations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    drop_id    uuid NOT NULL,
    user_id    uuid NOT NULL,
    status     reservation_status NOT NULL DEFAULT 'reserved',
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The variant the units come from (0 on a drop without sizes), how many units the hold keeps (all
    -- bought, given back or expired together), and how many times extend_hold lengthened it.
    variant    smallint NOT NULL DEFAULT 0,
    quantity   integer NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    extensions integer NOT NULL DEFAULT 0,
    -- Made for a buyer from the waiting list or a draw (an offer), not by their own reserve_item.
    offered    boolean NOT NULL DEFAULT false
) WITH (
    -- Every hold is inserted and then ended (a non-HOT update: status is in the partial indexes'
    -- predicates), so a busy day leaves dead rows and dead index entries at the pace of the holds
    -- themselves. Vacuum after 2% instead of the default 20%, so they do not pile up into the millions
    -- on a table that keeps growing; analyze as often, so plans follow the drops.
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
-- At most one live hold per buyer and drop, whatever its variant: a retry finds it instead of taking
-- more units, and a buyer changes size by buying or cancelling it first.
CREATE UNIQUE INDEX reservations_one_live_hold ON reservations (drop_id, user_id) WHERE status = 'reserved';
-- The expiry sweep reads live holds across drops, oldest first; a reserver that finds a drop's free
-- stock gone takes over that drop's oldest past-due hold. Without the per-drop index that look-up would
-- walk every live hold of the drop (tens of milliseconds on a drop of 60,000 holds) at the very moment
-- a drop sells out.
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'reserved';
-- `expires_at IS NOT NULL` (always true) makes this index unusable to a query without a bound on
-- expires_at: otherwise, on a new install, the look-up of a buyer's live hold by (drop_id, user_id)
-- ties on cost with the unique index above while the table is empty, and the plan cached then walks
-- every live hold of the drop on each call once the drop is busy.
CREATE INDEX reservations_due_by_drop ON reservations (drop_id, expires_at)
    WHERE status = 'reserved' AND expires_at IS NOT NULL;

-- Ended holds that archive_holds moved out of `reservations` (expired and cancelled ones only: a
-- purchased hold stays, its sale refers to it). Nothing reads this table on the hot path; purchase and
-- cancel look here (_lock_hold) only to answer an archived hold as it ended. Empty it at will.
CREATE TABLE archived_holds (
    id          uuid PRIMARY KEY,
    drop_id     uuid NOT NULL,
    user_id     uuid NOT NULL,
    status      reservation_status NOT NULL CHECK (status IN ('expired', 'cancelled')),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    variant     smallint NOT NULL DEFAULT 0,
    quantity    integer NOT NULL DEFAULT 1,
    extensions  integer NOT NULL DEFAULT 0,
    offered     boolean NOT NULL DEFAULT false
);

-- A sale keeps its hold: the key has no ON DELETE CASCADE, so removing holds can never remove sales
-- (and with them the per-buyer limits); archive_holds leaves purchased holds where they are.
CREATE TABLE purchases (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    reservation_id uuid NOT NULL UNIQUE REFERENCES reservations (id),
    drop_id        uuid NOT NULL,
    user_id        uuid NOT NULL,
    price          numeric(12, 2) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The stock feed's publication that announced this sale; NULL until one has (see feed.sql).
    feed_seq       bigint,
    -- The hold's variant and units; `price` is per unit.
    variant        smallint NOT NULL DEFAULT 0,
    quantity       integer NOT NULL DEFAULT 1 CHECK (quantity >= 1)
);
-- The activity feed: the most recent buyers of a drop.
CREATE INDEX purchases_feed ON purchases (drop_id, created_at DESC);
-- The per-user limit counts the units of a buyer's purchases of a drop.
CREATE INDEX purchases_by_buyer ON purchases (user_id, drop_id);
-- Sales the feed has not announced yet: small, whatever the number of sales behind it.
CREATE INDEX purchases_unpublished ON purchases (drop_id) WHERE feed_seq IS NULL;

-- Who batches a drop's reservations now (share_batch_turns): each caller (an HTTP adapter, under an id
-- it draws when it starts) and when it last said so. Unlogged: it is worth nothing after a crash, and
-- keeping it costs no WAL flush. No foreign key, as for holds: share_batch_turns checks the drop.
CREATE UNLOGGED TABLE batch_callers (
    drop_id uuid NOT NULL,
    caller  uuid NOT NULL,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (drop_id, caller)
);

-- What the stock feed last published per drop (see feed.sql). create_drop adds the row with `pending`
-- set, so a new drop is published once; after that only drops with activity are looked at.
CREATE TABLE feed_state (
    drop_id      uuid PRIMARY KEY REFERENCES drops (id) ON DELETE CASCADE,
    seq          bigint NOT NULL DEFAULT 0,
    available    integer NOT NULL,
    sold         integer NOT NULL DEFAULT 0,
    held         integer NOT NULL DEFAULT 0,
    pending      boolean NOT NULL DEFAULT true,
    published_at timestamptz,
    -- The length of the drop's line as of the last publication (line_moves since then add to it), and
    -- how many publications found it moved (a buyer ahead leaving while another joins behind leaves
    -- the length as it was, not the places).
    waiting      integer NOT NULL DEFAULT 0,
    line_seq     bigint NOT NULL DEFAULT 0,
    -- A sized drop's available units per variant at the last publication, element i for variant i;
    -- NULL for a drop without sizes. The notice carries only the variants that differ from it.
    variants     integer[]
);
-- The drops a tick must look at besides those with live holds: units held at the last publication
-- (they may have ended since), or never published.
CREATE INDEX feed_state_to_check ON feed_state (drop_id) WHERE held > 0 OR pending;

-- What `active_drops` and `drop_status` answer: a drop, its exact stock and its three latest buyers.
CREATE TYPE recent_purchase AS (
    id         uuid,
    user_id    uuid,
    username   text,
    created_at timestamptz
);

CREATE TYPE drop_summary AS (
    id              uuid,
    name            text,
    price           numeric(12, 2),
    total_stock     integer,
    available_stock integer,
    held_stock      integer,
    sold_stock      integer,
    starts_at       timestamptz,
    ends_at         timestamptz,
    hold_seconds    integer,
    per_user_limit  integer,
    created_at      timestamptz,
    recent_purchases recent_purchase[]
);

-- One variant of a drop as `variant_status` and the drop summaries show it (label NULL: the implicit
-- variant of a drop without sizes).
CREATE TYPE variant_stock AS (
    variant         smallint,
    label           text,
    total_stock     integer,
    available_stock integer,
    held_stock      integer,
    sold_stock      integer
);

-- The waiting list: buyers waiting for units of a drop that is sold out or fully held (waitlist.sql).
-- One line per drop, in `place` order (lower: earlier); a buyer has one place per drop whatever sizes
-- they wait for (`variants`: any of them will do, {0} on a drop without sizes). A buyer who wants
-- several units is offered them all at once: units that come back for them are kept (`kept` units of
-- `kept_variant`, out of stock and counted as held) until there are enough. Like holds, no foreign
-- keys: the functions check the drop and the buyer.
CREATE SEQUENCE waitlist_place;
CREATE TABLE waitlist (
    drop_id      uuid NOT NULL,
    user_id      uuid NOT NULL,
    place        bigint NOT NULL DEFAULT nextval('waitlist_place'),
    variants     smallint[] NOT NULL CHECK (cardinality(variants) BETWEEN 1 AND 100),
    quantity     integer NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    kept_variant smallint,
    kept         integer NOT NULL DEFAULT 0 CHECK (kept >= 0 AND kept < quantity),
    joined_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (drop_id, user_id)
);
CREATE UNIQUE INDEX waitlist_line ON waitlist (drop_id, place);

-- Moves in the lines since the last publication: +1 for a buyer who joined, -1 for one who left or was
-- served (one row per call). Rows are only ever inserted, and removed by the publication that adds them
-- into feed_state.waiting (feed.sql), so a line's length is known without counting the line, and
-- nobody waits for anybody to record a move.
CREATE TABLE line_moves (
    drop_id uuid NOT NULL,
    delta   integer NOT NULL
);
CREATE INDEX line_moves_by_drop ON line_moves (drop_id);

-- Buyers whose hold ended (ran out, or was cancelled) while others were waiting for its units, and
-- until when they may not reserve that drop again. Rows past `until` mean nothing; archive_holds
-- removes them.
CREATE TABLE cooldowns (
    drop_id uuid NOT NULL,
    user_id uuid NOT NULL,
    until   timestamptz NOT NULL,
    PRIMARY KEY (drop_id, user_id)
);

-- Offers made since the last publication: the worker's publication tells each buyer's inbox about
-- theirs and empties it, in one transaction (feed.sql).
CREATE TABLE offers_unsent (
    reservation_id uuid PRIMARY KEY,
    drop_id        uuid NOT NULL,
    user_id        uuid NOT NULL
);

-- A draw's entries (draw.sql): one per buyer and drop, the sizes any of which will do, and, once drawn,
-- the entry's place in the draw's order. The entry's id, made when the buyer enters and so fixed before
-- the seed exists, is what the draw hashes: it can be published where a buyer's id cannot.
CREATE TABLE draw_entries (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    drop_id    uuid NOT NULL,
    user_id    uuid NOT NULL,
    variants   smallint[] NOT NULL CHECK (cardinality(variants) BETWEEN 1 AND 100),
    quantity   integer NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    entered_at timestamptz NOT NULL DEFAULT now(),
    place      integer,
    UNIQUE (drop_id, user_id)
);
CREATE INDEX draw_entries_order ON draw_entries (drop_id, place);

-- A drop's draw, once run: the seed it was run with (published), how many entries it ordered and how
-- many got an offer at once.
CREATE TABLE draws (
    drop_id  uuid PRIMARY KEY REFERENCES drops (id) ON DELETE CASCADE,
    seed     text NOT NULL,
    drawn_at timestamptz NOT NULL DEFAULT now(),
    entries  integer NOT NULL,
    winners  integer NOT NULL
);

-- What join_waitlist and enter_draw answer: the buyer's place (sizes by label; NULL on a drop without
-- sizes) and whether this call made it (fresh) or found it.
CREATE TYPE waitlist_entry AS (
    drop_id   uuid,
    user_id   uuid,
    "position" integer,
    variants  text[],
    quantity  integer,
    joined_at timestamptz,
    fresh     boolean
);

CREATE TYPE draw_entry AS (
    entry_id   uuid,
    drop_id    uuid,
    user_id    uuid,
    variants   text[],
    quantity   integer,
    entered_at timestamptz,
    fresh      boolean
);

-- Who may do what. The API functions run with the rights of the extension's owner (SECURITY DEFINER),
-- so an application role needs nothing but EXECUTE on the functions it calls: it cannot touch a table
-- directly, and so cannot sell a unit, or change stock, except through the rules above.
-- search_path is pinned on every such function: otherwise a caller could put an operator of their own
-- in front of pg_catalog's and have it run with the owner's rights.
--
-- The functions a drop's traffic runs also pin planner settings, for themselves and everything they
-- call:
-- - enable_seqscan = off, enable_bitmapscan = off: their plans are cached per connection, and a plan
--   made while a table was small (a new install, the first drop) would keep scanning it whole after it
--   has grown, until statistics catch up; a bitmap scan reads every version of a drop's slot rows where
--   an ordered index scan stops at the first (1.8 ms against 0.02 ms on a new install). Every
--   statement they run has an index made for it, so this only takes bad choices away.
-- - jit = off: under enable_seqscan = off a statement with no index to use (emptying the small queue
--   tables the feed drains) is costed as "disabled", far past JIT's threshold, and compiling it took
--   250 ms of every worker tick. These are short statements that JIT never speeds up.
-- - enable_hashjoin = off, enable_mergejoin = off, for the worker's two calls: their joins are of a
--   handful of queued rows with big tables (the offers to announce with `users`), and a plan the worker
--   cached while those tables were small hashed all of the big table on every tick (a fifth of the CPU
--   under load, until autovacuum's statistics replaced it). An index probe per queued row is the plan.
-- - plan_cache_mode = force_generic_plan: statements over arrays of buyers (unnest) look cheaper to the
--   planner once it knows the array, so PostgreSQL's plan cache would keep planning them afresh on every
--   call; that planning cost reserve_item more than half its time (0.45x the calls per second,
--   measured). The generic plans are the index plans anyway.
--
-- Nothing is granted to PUBLIC. grant_access below is the one list of what a role may call.

REVOKE ALL ON ALL TABLES IN SCHEMA dropstock FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA dropstock FROM PUBLIC;

ALTER FUNCTION create_user(text, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- create_drop pins enable_seqscan off too, for the foreign-key checks its inserts run: their plan is made
-- once per connection, and one made while `drops` looked small scanned all of it for every slot row
-- (10,000 drops made in one statement took two minutes instead of five seconds).
ALTER FUNCTION create_drop(text, numeric, integer, timestamptz, integer, integer, timestamptz, jsonb, integer,
                           text, integer)
      SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off SET enable_bitmapscan = off;
-- reserve_item's fast path (_reserve_fast) runs no statement, so the planner settings are pinned on its
-- fallback, which does: setting and restoring five more settings on every call was 2% of all CPU under
-- (b) of `make bench-sql`, for calls that plan nothing.
ALTER FUNCTION reserve_item(uuid, uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION _reserve_item(uuid, uuid, text, integer) SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
      SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION take_batch_turn(uuid, integer, integer, boolean) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION share_batch_turns(uuid, uuid, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION reserve_items(uuid, uuid[], text[], integer[]) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
      SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION purchase(uuid, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
      SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION cancel_reservation(uuid, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
      SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION expire_reservations(integer, timestamptz) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
      SET enable_hashjoin = off SET enable_mergejoin = off SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION extend_hold(uuid, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
      SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION variant_status(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION active_drops() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION drop_status(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION drop_buyers(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
ALTER FUNCTION publish_changes() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION _publish_changes(uuid[], uuid[], timestamptz[], boolean) SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
      SET enable_hashjoin = off SET enable_mergejoin = off SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION archive_holds(timestamptz, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION join_waitlist(uuid, uuid, text[], integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
ALTER FUNCTION join_waitlist(uuid, uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION leave_waitlist(uuid, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
ALTER FUNCTION waitlist_position(uuid, uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION waitlist_length(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION buyer_holds(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION inbox_of(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION enter_draw(uuid, uuid, text[], integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION enter_draw(uuid, uuid, text, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION run_draw(uuid, text) SECURITY DEFINER SET search_path = pg_catalog, pg_temp
      SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
ALTER FUNCTION run_due_draws() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION draw_status(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION draw_result(uuid) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- grant_access: let `role` call the API, and nothing else: the buyer-facing functions, and with
-- `runs_drops` also creating drops, the worker's three calls (for a scheduler when the worker is not
-- preloaded), archiving, running draws and reading any buyer's inbox name (for an application that
-- knows its buyers by their sign-in, not by their inbox key). The one place the grant list is written; the README and the tests call
-- it. It runs with the caller's rights, so only the extension's owner (or a superuser) can use it.
CREATE FUNCTION grant_access(role regrole, runs_drops boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role IS NULL OR runs_drops IS NULL THEN
        RAISE EXCEPTION 'role and runs_drops are required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA dropstock TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dropstock.reserve_item(uuid, uuid, text, integer), '
                   'dropstock.reserve_items(uuid, uuid[], text[], integer[]), dropstock.take_batch_turn(uuid, integer, integer, boolean), '
                   'dropstock.share_batch_turns(uuid, uuid, integer), '
                   'dropstock.purchase(uuid, uuid), '
                   'dropstock.cancel_reservation(uuid, uuid), dropstock.extend_hold(uuid, uuid), '
                   'dropstock.create_user(text, uuid), dropstock.active_drops(), dropstock.drop_status(uuid), '
                   'dropstock.variant_status(uuid), '
                   'dropstock.join_waitlist(uuid, uuid, text[], integer), dropstock.join_waitlist(uuid, uuid, text, integer), '
                   'dropstock.leave_waitlist(uuid, uuid), dropstock.waitlist_position(uuid, uuid), '
                   'dropstock.waitlist_length(uuid), dropstock.buyer_holds(uuid), '
                   'dropstock.enter_draw(uuid, uuid, text[], integer), dropstock.enter_draw(uuid, uuid, text, integer), '
                   'dropstock.draw_status(uuid), dropstock.draw_result(uuid), dropstock.drop_buyers(uuid) TO %s', role);
    IF runs_drops THEN
        EXECUTE format('GRANT EXECUTE ON FUNCTION '
                       'dropstock.create_drop(text, numeric, integer, timestamptz, integer, integer, timestamptz, '
                       'jsonb, integer, text, integer), '
                       'dropstock.expire_reservations(integer, timestamptz), dropstock.publish_changes(), '
                       'dropstock.archive_holds(timestamptz, integer), dropstock.run_draw(uuid, text), '
                       'dropstock.run_due_draws(), dropstock.inbox_of(uuid) TO %s', role);
    END IF;
END
$$;
REVOKE EXECUTE ON FUNCTION grant_access(regrole, boolean) FROM PUBLIC;

-- One background-worker tick with nothing to do: the sweep's look for due holds, then the feed's look
-- for changed drops, each in its own transaction as the worker runs them.
SELECT dropstock.expire_reservations(1000);
SELECT dropstock.publish_changes();

-- One background-worker tick with nothing to do, as the worker runs most of them: the sweep's look for
-- holds that fell due in the last 10 seconds, then the feed's look at the changed drops (none: the list
-- the commits leave the worker is empty), each in its own transaction.
SELECT dropstock.expire_reservations(1000, now() - interval '10 seconds');
SELECT dropstock._publish_changes('{}', '{}', '{}', false);

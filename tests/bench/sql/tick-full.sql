-- The worker's full sweep, once every 30 seconds: a look at every due hold however old, walking the
-- due-holds index from its oldest entry.
SELECT dropstock.expire_reservations(1000);

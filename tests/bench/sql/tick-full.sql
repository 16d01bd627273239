-- What the worker adds every 30 seconds: a look at every due hold however old, walking the due-holds
-- index from its oldest entry, and the feed's look for every drop with live holds, walking the
-- live-hold index, as a publication does when not told which drops changed.
SELECT dropstock.expire_reservations(1000);
SELECT dropstock.publish_changes();

//! The background worker on a bad day, each test in a throwaway cluster of its own: a
//! `dropstock.database` that does not exist yet, and ticks that fail. The worker must say so once,
//! stay the same process, show what it does in `pg_stat_activity`, and serve as soon as the trouble
//! is gone.
//!
//! Each cluster is made with initdb under `target/worker-faults/`, runs as `postgres` on a free port
//! with the library preloaded, and is stopped and removed when the test ends, passed or not. The
//! extension must be installed into the system PostgreSQL first (`make install`);
//! `DROPSTOCK_PG_BIN` names the server binaries (default `/usr/lib/postgresql/15/bin`).

use std::time::{Duration, Instant};

use dropstock_tests::db::{listen_at, new_buyer, new_drop, reserve, stock};
use dropstock_tests::faults::{terminate, worker_row, ThrowawayCluster};
use tokio_postgres::Client;
use uuid::Uuid;

/// The database the first test names in `dropstock.database` before it exists.
const NOT_THERE_YET: &str = "not_there_yet";
/// The error the sabotaged `_publish_changes` (the worker's publication) raises; found in the server
/// log by this text.
const SABOTAGE: &str = "_publish_changes sabotaged by worker_faults";

/// Asserts the worker keeps `pid` for `span`, sampling `pg_stat_activity` every 100 ms.
async fn same_worker_for(cluster: &ThrowawayCluster, db: &Client, pid: i32, span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        let row = worker_row(db).await;
        assert_eq!(
            row.as_ref().map(|w| w.pid),
            Some(pid),
            "the worker changed: {row:?}; server log:\n{}",
            cluster.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hold of a new buyer on `drop`.
async fn hold_on(db: &Client, drop: Uuid) -> Uuid {
    reserve(db, drop, new_buyer(db).await).await
}

/// `dropstock.database` names a database that does not exist: the worker says so once, waits in one
/// process without restarts, connects once the database is created, waits there for the extension
/// with one log line, and then ends holds on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_reported_once_and_served_once_created() {
    let started = Instant::now();
    let cluster = ThrowawayCluster::start(NOT_THERE_YET);
    let admin = cluster.connect("postgres").await;
    let missing =
        format!("database \"{NOT_THERE_YET}\" named by dropstock.database does not exist");
    let waiting = format!("dropstock: waiting for database \"{NOT_THERE_YET}\" to exist");

    let waiter = cluster
        .wait_for(
            Duration::from_secs(20),
            "the worker shows it waits for the database",
            || async {
                worker_row(&admin)
                    .await
                    .filter(|w| w.query == waiting && w.database.is_empty())
            },
        )
        .await;
    cluster
        .wait_for(
            Duration::from_secs(10),
            "the missing database is logged",
            || async { (cluster.log_lines_with(&missing) > 0).then_some(()) },
        )
        .await;
    // Three seconds span the checks at 1 s and 1 + 2 s: one process throughout, one message.
    same_worker_for(&cluster, &admin, waiter.pid, Duration::from_secs(3)).await;
    let log = cluster.log();
    assert_eq!(
        cluster.log_lines_with(&missing),
        1,
        "the missing database is logged once:\n{log}"
    );
    assert!(
        log.contains("HINT:  Create the database"),
        "the message says what to do:\n{log}"
    );
    assert!(
        !log.contains("FATAL") && !log.contains("exited with exit code"),
        "nothing failed or restarted while waiting:\n{log}"
    );

    admin
        .batch_execute(&format!("CREATE DATABASE {NOT_THERE_YET}"))
        .await
        .expect("CREATE DATABASE");
    let created = Instant::now();
    // The pause between checks grows to 30 s at most. Without the extension there, the worker waits
    // for it, quietly: one log line.
    let server = cluster
        .wait_for(
            Duration::from_secs(40),
            "the worker connects to the new database and waits for the extension",
            || async {
                worker_row(&admin).await.filter(|w| {
                    w.database == NOT_THERE_YET
                        && w.query
                            == "dropstock: waiting for CREATE EXTENSION dropstock in this database"
                })
            },
        )
        .await;
    let serving_after = created.elapsed();
    same_worker_for(&cluster, &admin, server.pid, Duration::from_secs(1)).await;
    assert_eq!(
        cluster.log_lines_with("waiting for CREATE EXTENSION dropstock"),
        1,
        "waiting for the extension is logged once:\n{}",
        cluster.log()
    );
    let db = cluster.connect(NOT_THERE_YET).await;
    db.batch_execute("CREATE EXTENSION dropstock")
        .await
        .expect("CREATE EXTENSION in the worker's database");

    // A one-second hold there runs out and the worker ends it.
    let drop = new_drop(&db, 1, 1).await;
    let hold = hold_on(&db, drop).await;
    cluster
        .wait_for(
            Duration::from_secs(10),
            "the worker expires the hold in the new database",
            || async {
                let status: String = db
                    .query_one(
                        "SELECT status::text FROM dropstock.reservations WHERE id = $1",
                        &[&hold],
                    )
                    .await
                    .expect("read the hold")
                    .get(0);
                (status == "expired").then_some(())
            },
        )
        .await;
    assert_eq!(stock(&db, drop).await.0, 1, "the unit is back");
    assert_eq!(worker_row(&admin).await.map(|w| w.pid), Some(server.pid));

    let log = cluster.log();
    assert_eq!(
        cluster.log_lines_with(&missing),
        1,
        "still logged once:\n{log}"
    );
    assert_eq!(
        cluster.log_lines_with(&format!("serving database \"{NOT_THERE_YET}\"")),
        1,
        "served by one worker, started once:\n{log}"
    );
    assert!(
        !log.contains("FATAL"),
        "no connection attempt failed:\n{log}"
    );
    eprintln!(
        "missing database: waited in pid {}, served by pid {} {:.1} s after CREATE DATABASE; test took {:.1} s",
        waiter.pid,
        server.pid,
        serving_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// `_publish_changes` raises on every tick: the worker logs it once, stays the same process, shows
/// its back-off, publishes again once the function is fixed, and still stops at once on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tick_is_logged_once_and_the_same_worker_recovers() {
    let started = Instant::now();
    let cluster = ThrowawayCluster::start("postgres");
    let db = cluster.connect("postgres").await;
    db.batch_execute("CREATE EXTENSION dropstock")
        .await
        .expect("CREATE EXTENSION");
    let serving = cluster
        .wait_for(
            Duration::from_secs(20),
            "the worker ticks in database postgres",
            || async {
                worker_row(&db)
                    .await
                    .filter(|w| w.database == "postgres" && w.query.starts_with("dropstock: "))
                    .filter(|w| !w.query.contains("CREATE EXTENSION"))
            },
        )
        .await;
    let pid = serving.pid;

    // Keep the real definition to put back, and break the function with the same signature.
    let row = db
        .query_one(
            "SELECT pg_get_functiondef(p), pg_get_function_result(p)
               FROM (SELECT 'dropstock._publish_changes(uuid[], uuid[], timestamptz[], boolean)'::regprocedure::oid AS p) f",
            &[],
        )
        .await
        .expect("read _publish_changes");
    let (original, returns): (String, String) = (row.get(0), row.get(1));
    let sabotage = format!(
        "CREATE OR REPLACE FUNCTION dropstock._publish_changes(listed uuid[], made_holds uuid[], made_at timestamptz[], walk boolean) RETURNS {returns} LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION '{SABOTAGE}' USING ERRCODE = 'program_limit_exceeded';
         END $$"
    );
    db.batch_execute(&sabotage)
        .await
        .expect("break _publish_changes");

    let backing_off = cluster
        .wait_for(
            Duration::from_secs(10),
            "pg_stat_activity shows the back-off",
            || async {
                worker_row(&db)
                    .await
                    .filter(|w| w.query.starts_with("dropstock: backing off after an error"))
            },
        )
        .await;
    assert_eq!(backing_off.pid, pid, "the same worker backs off");
    assert!(
        backing_off.query.contains(SABOTAGE),
        "the activity names the error: {backing_off:?}"
    );
    assert_eq!(backing_off.state, "idle");
    // Six seconds hold several failed attempts (pauses of 0.25, 0.5, 1, 2 and 4 s).
    same_worker_for(&cluster, &db, pid, Duration::from_secs(6)).await;
    let log = cluster.log();
    assert_eq!(
        cluster.log_lines_with(SABOTAGE),
        1,
        "the failure is logged once while it repeats:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "WARNING:  dropstock worker: publishing stock changes failed: {SABOTAGE}"
        )),
        "the log says what failed:\n{log}"
    );
    assert!(
        !log.contains("exited with exit code") && !log.contains("terminated by signal"),
        "the worker did not die:\n{log}"
    );

    // Fixed: the next attempt (at most 5 s later) publishes, from the same process.
    db.batch_execute(&original)
        .await
        .expect("restore _publish_changes");
    let mut listener = listen_at(&cluster.url("postgres")).await;
    let drop = new_drop(&db, 5, 60).await;
    hold_on(&db, drop).await;
    let wanted = drop.to_string();
    let published = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(payload) = listener.notifications.recv().await {
            if payload.to_string().contains(&wanted) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        published,
        Ok(true),
        "no notification about the new drop; server log:\n{}",
        cluster.log()
    );
    assert_eq!(worker_row(&db).await.map(|w| w.pid), Some(pid));
    assert_eq!(
        cluster.log_lines_with("ticks succeed again"),
        1,
        "the recovery is logged:\n{}",
        cluster.log()
    );

    // SIGTERM in the middle of a back-off ends the worker at once, not after its pause.
    db.batch_execute(&sabotage).await.expect("break it again");
    cluster
        .wait_for(Duration::from_secs(10), "a second back-off", || async {
            worker_row(&db)
                .await
                .filter(|w| w.query.starts_with("dropstock: backing off after an error"))
        })
        .await;
    let killed = Instant::now();
    terminate(&db, pid).await;
    cluster
        .wait_for(
            Duration::from_secs(2),
            "the worker stops on SIGTERM during its back-off",
            || async { (worker_row(&db).await.map(|w| w.pid) != Some(pid)).then_some(()) },
        )
        .await;
    let stopped_after = killed.elapsed();
    eprintln!(
        "failing tick: pid {pid} backed off, logged the error once, published again after the fix, \
         stopped {:.0} ms after SIGTERM; test took {:.1} s",
        stopped_after.as_secs_f64() * 1000.0,
        started.elapsed().as_secs_f64()
    );
}

//! Faults the tests inject into PostgreSQL: stopping and starting the test cluster, throwaway clusters of
//! a test's own, and killing the background worker or the adapter's LISTEN backend.
//!
//! Server binaries come from `DROPSTOCK_PG_BIN` (the Makefile passes its `PG_BIN`), by default Debian's
//! PostgreSQL 15.

use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use tokio_postgres::Client;
use uuid::Uuid;

use crate::adapter::free_port;
use crate::db::{connect_to, wait_for};

pub fn pg_bin() -> PathBuf {
    std::env::var_os("DROPSTOCK_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Runs a server binary as `postgres` (PostgreSQL refuses root).
pub fn as_postgres<I>(program: &str, arguments: I) -> Output
where
    I: IntoIterator,
    I::Item: AsRef<OsStr>,
{
    Command::new("sudo")
        .args(["-u", "postgres"])
        .arg(pg_bin().join(program))
        .args(arguments)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} as postgres: {e}"))
}

/// The cluster a fault test stops and starts: `DROPSTOCK_PGDATA` is its data directory, and
/// `DATABASE_URL` must point at it. Without `DROPSTOCK_PGDATA` the test fails, saying how to run it.
pub struct Cluster {
    pub data: PathBuf,
}

impl Cluster {
    pub fn from_env() -> Cluster {
        let data = std::env::var_os("DROPSTOCK_PGDATA").map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "the fault tests stop and start PostgreSQL, so they need the cluster's data directory: \
                 run them as `DROPSTOCK_PGDATA=<data dir> DATABASE_URL=<its URL> cargo test -p dropstock-tests \
                 --test faults -- --test-threads=1` (`make integration-test` runs them in a throwaway cluster)"
            )
        });
        assert!(
            data.join("PG_VERSION").exists(),
            "DROPSTOCK_PGDATA={} is not a PostgreSQL data directory",
            data.display()
        );
        Cluster { data }
    }

    fn pg_ctl(&self, arguments: &[&str]) {
        let log = self
            .data
            .parent()
            .unwrap_or(&self.data)
            .join("postgresql.log");
        let mut all: Vec<&OsStr> = vec![
            "-D".as_ref(),
            self.data.as_ref(),
            "-l".as_ref(),
            log.as_ref(),
        ];
        all.extend(arguments.iter().map(OsStr::new));
        let output = as_postgres("pg_ctl", all);
        assert!(
            output.status.success(),
            "pg_ctl {arguments:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Kills the server as a power cut would: no checkpoint, no goodbye to clients.
    pub fn stop_immediately(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
    }

    /// Starts it again and waits until it accepts connections (after crash recovery).
    pub fn start(&self) {
        self.pg_ctl(&["-w", "-t", "60", "start"]);
    }
}

/// Restarts the cluster if a test panics while it is down, so later tests are not left without it.
pub struct StartOnDrop<'a> {
    pub cluster: &'a Cluster,
    pub down: bool,
}

impl Drop for StartOnDrop<'_> {
    fn drop(&mut self) {
        if self.down {
            self.cluster.start();
        }
    }
}

/// A cluster of the test's own; dropping it stops the server and removes its directory.
pub struct ThrowawayCluster {
    root: PathBuf,
    port: u16,
}

impl ThrowawayCluster {
    /// initdb, the library preloaded with `dropstock.database = database`, started on a free port.
    pub fn start(database: &str) -> ThrowawayCluster {
        let parent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/worker-faults");
        std::fs::create_dir_all(&parent).expect("create target/worker-faults");
        let root = parent.join(Uuid::new_v4().simple().to_string());
        std::fs::create_dir(&root).expect("create the cluster directory");
        let cluster = ThrowawayCluster {
            root: root.canonicalize().expect("canonical cluster path"),
            port: 0,
        };
        let chown = Command::new("chown")
            .arg("postgres:")
            .arg(&cluster.root)
            .status()
            .expect("run chown");
        assert!(
            chown.success(),
            "chown postgres: {}",
            cluster.root.display()
        );
        let reachable = Command::new("sudo")
            .args(["-u", "postgres", "test", "-w"])
            .arg(&cluster.root)
            .status()
            .expect("run test as postgres");
        assert!(
            reachable.success(),
            "the postgres user cannot write {} (run `make pg-access` to let it through the directories above)",
            cluster.root.display()
        );
        let data = cluster.data();
        let initdb = as_postgres(
            "initdb",
            [
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut conf, b"\ninclude 'worker_faults.conf'\n")
            .expect("append to postgresql.conf");
        let mut cluster = cluster;
        // A port can be taken between choosing and binding it: try a few.
        for _ in 0..3 {
            cluster.port = free_port();
            let settings = format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
                 shared_preload_libraries = 'dropstock'\ndropstock.database = '{database}'\n\
                 fsync = off\nlogging_collector = off\n",
                cluster.port
            );
            std::fs::write(data.join("worker_faults.conf"), settings)
                .expect("write worker_faults.conf");
            let started = cluster.pg_ctl(&["-w", "-t", "60", "start"]);
            if started.status.success() {
                return cluster;
            }
        }
        panic!(
            "the throwaway cluster did not start; its log:\n{}",
            cluster.log()
        );
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.root.join("postgresql.log")
    }

    fn pg_ctl(&self, arguments: &[&str]) -> Output {
        let data = self.data();
        let log = self.log_path();
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(arguments);
        as_postgres("pg_ctl", all)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many log lines contain `text`.
    pub fn log_lines_with(&self, text: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn connect(&self, database: &str) -> Client {
        let url = self.url(database);
        match connect_to(&url).await {
            Ok((client, _)) => client,
            Err(e) => panic!("cannot reach {url}: {e}\nlog:\n{}", self.log()),
        }
    }

    /// Polls `probe` until it gives a value; past `limit`, fails with `what` and the server log.
    pub async fn wait_for<T, F, Fut>(&self, limit: Duration, what: &str, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        wait_for(limit, probe)
            .await
            .unwrap_or_else(|| panic!("{what}: not within {limit:?}; server log:\n{}", self.log()))
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("server log of {}:\n{}", self.root.display(), self.log());
        }
        if self.data().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The worker's row in `pg_stat_activity`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    pub pid: i32,
    /// Empty while it is connected to no database (the database check).
    pub database: String,
    pub state: String,
    pub query: String,
}

/// The worker's row; there is never more than one.
pub async fn worker_row(db: &Client) -> Option<WorkerRow> {
    let rows = db
        .query(
            "SELECT pid, coalesce(datname, ''), coalesce(state, ''), coalesce(query, '')
               FROM pg_stat_activity WHERE backend_type = 'dropstock worker'",
            &[],
        )
        .await
        .expect("read pg_stat_activity");
    assert!(rows.len() <= 1, "more than one dropstock worker: {rows:?}");
    rows.first().map(|row| WorkerRow {
        pid: row.get(0),
        database: row.get(1),
        state: row.get(2),
        query: row.get(3),
    })
}

/// The worker's process id, if it runs.
pub async fn worker_pid(db: &Client) -> Option<i32> {
    worker_row(db).await.map(|worker| worker.pid)
}

/// Kills a backend (the worker, say) as an operator or the OOM killer would.
pub async fn terminate(db: &Client, pid: i32) {
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend");
}

/// Kills every adapter's LISTEN backend (named `dropstock-http-listen`) and waits until each has exited
/// (at most 10 s each), so that none of them is still up, about to die, when this returns; how many
/// there were.
pub async fn terminate_listen_backends(db: &Client) -> usize {
    db.query(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
          WHERE application_name = 'dropstock-http-listen'",
        &[],
    )
    .await
    .unwrap()
    .len()
}

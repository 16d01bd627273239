//! PgBouncer in front of the test cluster, in transaction pooling mode, for the tests that show the
//! adapter works through a pooler (`DROPSTOCK_TEST_POOLER=pgbouncer` runs the REST suite that way).
//!
//! Each instance is a `pgbouncer` process of its own on a free loopback port, run as `postgres` (it
//! refuses root), with its configuration and log in a directory of its own; it is killed when dropped,
//! and by the kernel if the test process dies first.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::adapter::free_port;
use crate::db::{connect_to, database_url, wait_for};

/// Debian's PgBouncer (the `pgbouncer` package).
const BINARY: &str = "/usr/sbin/pgbouncer";

/// Whether the tests are asked to send the adapter's requests through PgBouncer.
pub fn requested() -> bool {
    std::env::var("DROPSTOCK_TEST_POOLER").is_ok_and(|value| value == "pgbouncer")
}

pub struct PgBouncer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// The uid and gid of `postgres`, from the system's user database.
fn postgres_ids() -> (u32, u32) {
    // SAFETY: getpwnam reads the user database into static storage; the two fields are copied out at
    // once, and the tests look no other user up meanwhile.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(
        !entry.is_null(),
        "a postgres user (the postgresql package creates it)"
    );
    // SAFETY: checked non-null above.
    unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
}

impl PgBouncer {
    /// PgBouncer in transaction mode in front of the test cluster (`DATABASE_URL`'s host and port),
    /// ready to take connections.
    pub async fn start() -> PgBouncer {
        let target: tokio_postgres::Config = database_url().parse().expect("DATABASE_URL");
        let host = match target.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let target_port = target.get_ports().first().copied().unwrap_or(5432);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("dropstock-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        let config = dir.join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 postgres = host={host} port={target_port} dbname=postgres user=postgres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = any\n\
                 pool_mode = transaction\n\
                 max_client_conn = 2000\n\
                 default_pool_size = 20\n\
                 logfile = {log}\n",
                log = dir.join("pgbouncer.log").display()
            ),
        )
        .unwrap();
        let mut command = Command::new(BINARY);
        command
            .arg(&config)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches nothing but the child's own settings.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY} (make setup installs it): {e}"));
        let bouncer = PgBouncer { child, port, dir };
        let url = bouncer.url();
        let ready = wait_for(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let (client, _) = connect_to(&url).await.ok()?;
                client.simple_query("SELECT 1").await.ok()
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "PgBouncer did not take connections within 10 s; log:\n{}",
            bouncer.log()
        );
        bouncer
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! The connection pool and the start-up checks: what must hold before the adapter takes its first
//! request. Queries live in `queries`; this module only opens and hands out connections.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;

use crate::db::queries::extension_installed;
use crate::db::DbError;

/// Why the adapter cannot start; each is printed as one line before a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(tokio_postgres::Error),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("cannot reach the database at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error(
        "the dropstock extension is not installed in database {database}; run CREATE EXTENSION dropstock there first"
    )]
    NoExtension { database: String },
}

/// The waits a request may spend on the database before it gets a 503 rather than hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StartupError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(StartupError::BadUrl)?;
    config.connect_timeout(CONNECT_TIMEOUT);
    // TCP keepalives let a connection to a vanished server fail instead of waiting forever.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// Where the database is, for messages: host, port and database name, never the password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

/// How requests send their SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Statements {
    /// Prepared once per connection and kept: one round trip less per call. Needs the server to keep a
    /// connection's statements, as PostgreSQL does, and poolers in session mode.
    Prepared,
    /// Unnamed, parsed with every call and kept nowhere: what a pooler in transaction mode (PgBouncer's
    /// `pool_mode = transaction`) needs, since each call may land on another server connection.
    Unnamed,
}

/// The pool of request connections, and how long one database call may take on them.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    call_deadline: Duration,
    statements: Statements,
}

/// How much later than the server's `statement_timeout` the adapter stops waiting itself: normally the
/// server cancels first and the connection stays usable; the adapter's own deadline is for a server
/// that does not answer at all (a stopped backend, a dead network path).
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

pub fn open(
    config: &tokio_postgres::Config,
    size: usize,
    statement_timeout: Duration,
    statements: Statements,
) -> Result<Database, StartupError> {
    let mut config = config.clone();
    config.application_name("dropstock-http");
    // Set as a startup option, so it holds from the first statement and needs no round trip; options
    // given in the URL are kept. Poolers refuse startup options (PgBouncer: "unsupported startup
    // parameter"): behind one, set statement_timeout on the role instead; the adapter's own deadline
    // holds either way.
    if statements == Statements::Prepared {
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or(""),
            statement_timeout.as_millis()
        );
        config.options(options.trim_start());
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        // Fast recycling skips a round trip per checkout; a connection the server closed is noticed by
        // `is_closed` and replaced, and a query on one that died unnoticed answers 503 once.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CHECKOUT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| StartupError::Pool(error.to_string()))?;
    Ok(Database {
        pool,
        call_deadline: statement_timeout + DEADLINE_MARGIN,
        statements,
    })
}

impl Database {
    /// A connection from the pool, or 503 within `CHECKOUT_TIMEOUT` when none frees up.
    pub async fn connection(&self) -> Result<Connection, DbError> {
        Ok(Connection {
            object: Some(self.pool.get().await?),
            call_deadline: self.call_deadline,
            statements: self.statements,
            in_call: AtomicBool::new(false),
            in_transaction: AtomicBool::new(false),
        })
    }

    /// Refuses new checkouts; connections close as they come back.
    pub fn close(&self) {
        self.pool.close();
    }

    pub fn status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

/// A pooled connection checked out for one request or one batch. Calls on it have a deadline (`call`);
/// a call that did not finish, because its deadline passed or because the request was dropped
/// mid-call, leaves the connection with an answer still owed, so it is closed instead of going back to
/// the pool, where the next request would wait behind that answer. So is one left inside a transaction
/// (a batch's, `queries::begin_batch`) that was not ended: the next request would run in it.
pub struct Connection {
    object: Option<Object>,
    call_deadline: Duration,
    statements: Statements,
    in_call: AtomicBool,
    in_transaction: AtomicBool,
}

impl Connection {
    pub fn statements(&self) -> Statements {
        self.statements
    }

    /// Whether a transaction was begun on this connection and not yet ended.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Relaxed)
    }

    /// Marks a transaction begun (before BEGIN is sent) or ended (after COMMIT or ROLLBACK succeeded).
    pub fn set_in_transaction(&self, open: bool) {
        self.in_transaction.store(open, Ordering::Relaxed);
    }

    /// Runs one database call within the deadline.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        self.in_call.store(true, Ordering::Relaxed);
        let outcome = tokio::time::timeout(self.call_deadline, call).await;
        match outcome {
            Ok(outcome) => {
                self.in_call.store(false, Ordering::Relaxed);
                Ok(outcome?)
            }
            Err(_) => Err(DbError::Timeout(self.call_deadline)),
        }
    }
}

impl std::ops::Deref for Connection {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.object.as_ref().expect("a connection until dropped")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if *self.in_call.get_mut() || *self.in_transaction.get_mut() {
            if let Some(object) = self.object.take() {
                tracing::warn!(
                    "closing a database connection whose call or transaction did not finish"
                );
                // Taken out of the pool and dropped: deadpool's wrapper ends the connection's task.
                drop(Object::take(object));
            }
        }
    }
}

/// The startup check: the database answers and the extension is installed in it.
pub async fn check(
    database: &Database,
    config: &tokio_postgres::Config,
) -> Result<(), StartupError> {
    let unreachable = |reason: String| StartupError::Unreachable {
        target: describe(config),
        reason,
    };
    let client = database.connection().await.map_err(|error| {
        unreachable(match error {
            DbError::Pool(PoolError::Backend(error)) => first_line(&error),
            DbError::Pool(PoolError::Timeout(_)) => {
                format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())
            }
            other => first_line(&other),
        })
    })?;
    if !extension_installed(&client)
        .await
        .map_err(|error| unreachable(first_line(&error)))?
    {
        return Err(StartupError::NoExtension {
            database: config.get_dbname().unwrap_or("postgres").to_owned(),
        });
    }
    Ok(())
}

/// deadpool and tokio-postgres say "error connecting to server" and keep the reason (connection refused,
/// timed out) in the source chain; the one-line startup error names both so it says what to fix.
fn first_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

//! Command-line flags and environment: everything the adapter needs to know before it starts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::db::pool::Statements;
use crate::http::access::JwtRules;
use crate::http::limits::{Rate, RateLimits};

/// The HTTP and WebSocket front of the dropstock PostgreSQL extension.
///
/// Every flag can also be given by the environment variable shown beside it; secrets are best passed
/// that way, since command lines are visible to other users of the machine.
#[derive(Debug, Parser)]
#[command(name = "dropstock-http", version, about, long_about = None, max_term_width = 100)]
pub struct Config {
    /// PostgreSQL URL of the database where `CREATE EXTENSION dropstock` has been run, for example
    /// postgresql://postgres@127.0.0.1:5544/postgres
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,

    /// PostgreSQL URL for the one LISTEN connection, when it must differ from DATABASE_URL: behind a
    /// pooler in transaction mode, which cannot carry LISTEN, point this straight at PostgreSQL.
    #[arg(
        long,
        env = "DROPSTOCK_LISTEN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub listen_database_url: Option<String>,

    /// How requests send their SQL: `prepared` (kept per connection, one round trip less) or `unnamed`
    /// (what a pooler in transaction mode, such as PgBouncer's `pool_mode = transaction`, needs).
    #[arg(long, env = "DROPSTOCK_STATEMENTS", value_name = "MODE", value_enum,
          default_value_t = Statements::Prepared)]
    pub statements: Statements,

    /// Address and port to serve HTTP and the WebSocket feed on.
    #[arg(
        long,
        env = "DROPSTOCK_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Most database connections the adapter opens for requests (the LISTEN connection comes on top).
    #[arg(long, env = "DROPSTOCK_POOL_SIZE", value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub pool_size: u16,

    /// Bearer token that `POST /api/drops` requires. Without it, creating drops over HTTP is refused
    /// (drops can still be created in SQL with dropstock.create_drop).
    #[arg(
        long,
        env = "DROPSTOCK_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Lets clients without the admin token create drops (`POST /api/drops`), as the replaced Node
    /// backend did. Only for trusted networks and local development: anyone who can reach the adapter can
    /// then create drops. Off by default; a warning is logged at start-up when on. The flag alone turns it
    /// on; a value (true/false, 1/0, yes/no) says which.
    #[arg(
        long,
        env = "DROPSTOCK_OPEN_DROP_CREATION",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub open_drop_creation: bool,

    /// HS256 secret for buyer tokens. When set, reserve, purchase and cancel need
    /// `Authorization: Bearer <jwt>` whose `sub` is the buyer's user id, and `POST /api/users` needs the
    /// admin token. When unset, the `userId` in the request body is trusted.
    #[arg(
        long,
        env = "DROPSTOCK_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// When set, buyer tokens must carry this `iss` claim.
    #[arg(long, env = "DROPSTOCK_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, buyer tokens must carry this audience in their `aud` claim. When unset, the `aud` claim
    /// is not checked (tokens with and without one are accepted).
    #[arg(long, env = "DROPSTOCK_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Comma-separated origins that browsers may call the REST API from (for example
    /// https://shop.example), or `*` for any. Empty: no cross-origin access.
    #[arg(
        long,
        env = "DROPSTOCK_CORS_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// On SIGTERM, how long in-flight requests get to finish before the adapter exits anyway.
    #[arg(
        long,
        env = "DROPSTOCK_DRAIN_SECONDS",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub drain_seconds: u64,

    /// Seconds a connection may stay open without a request in progress (before its first byte, between
    /// keep-alive requests, and while its request headers trickle in) before it is closed.
    #[arg(long, env = "DROPSTOCK_IDLE_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_seconds: u64,

    /// Seconds a client gets to send a whole request body; slower bodies are answered 408.
    #[arg(long, env = "DROPSTOCK_BODY_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_seconds: u64,

    /// Seconds the database gets to answer one call (the pool's `statement_timeout`, and a deadline on the
    /// adapter's side for a server that stops answering altogether); past it the request is answered 503.
    #[arg(long, env = "DROPSTOCK_DB_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub db_timeout_seconds: u64,

    /// Seconds one request may take in all (waiting for a pool connection included); past it the answer
    /// is 503.
    #[arg(long, env = "DROPSTOCK_REQUEST_TIMEOUT_SECONDS", value_name = "SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_seconds: u64,

    /// Most client connections open at once (WebSocket clients included). Past it, new connections get
    /// 503 and are closed, except `/healthz`, which a few connections beyond the cap may still ask. The
    /// adapter raises its open-files limit to fit, and lowers this cap, with a warning, if it cannot.
    #[arg(long, env = "DROPSTOCK_MAX_CONNECTIONS", value_name = "N", default_value_t = 25_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Also serve HTTP/2 over cleartext (prior knowledge, as load balancers speak it to backends). Off by
    /// default: browsers use HTTP/2 only over TLS, which a proxy in front terminates.
    #[arg(long, env = "DROPSTOCK_HTTP2", default_value_t = false)]
    pub http2: bool,

    /// Requests per second one client address may make, sustained (health checks and metrics are not
    /// counted). 0 turns the limit off. Behind a load balancer or a NAT many buyers share one address:
    /// the default leaves room for thousands of them; raise it (or turn it off) there.
    #[arg(
        long,
        env = "DROPSTOCK_RATE_LIMIT_PER_IP",
        value_name = "PER_SECOND",
        default_value_t = 5000.0
    )]
    pub rate_limit_per_ip: f64,

    /// Requests one client address may make at once before the per-second rate applies.
    #[arg(
        long,
        env = "DROPSTOCK_RATE_LIMIT_PER_IP_BURST",
        value_name = "N",
        default_value_t = 10000
    )]
    pub rate_limit_per_ip_burst: u32,

    /// Reserves, purchases and cancels per second one buyer may make, sustained. 0 turns the limit off.
    #[arg(
        long,
        env = "DROPSTOCK_RATE_LIMIT_PER_USER",
        value_name = "PER_SECOND",
        default_value_t = 5.0
    )]
    pub rate_limit_per_user: f64,

    /// Reserves, purchases and cancels one buyer may make at once before the per-second rate applies.
    #[arg(
        long,
        env = "DROPSTOCK_RATE_LIMIT_PER_USER_BURST",
        value_name = "N",
        default_value_t = 20
    )]
    pub rate_limit_per_user_burst: u32,
}

impl Config {
    /// A secret set to the empty string (`DROPSTOCK_ADMIN_TOKEN=`) counts as not set: an empty bearer token
    /// must never unlock anything.
    pub fn admin_token(&self) -> Option<&str> {
        non_empty(&self.admin_token)
    }

    pub fn jwt_secret(&self) -> Option<&str> {
        non_empty(&self.jwt_secret)
    }

    pub fn jwt_rules(&self) -> Option<JwtRules<'_>> {
        self.jwt_secret().map(|secret| JwtRules {
            secret,
            issuer: non_empty(&self.jwt_issuer),
            audience: non_empty(&self.jwt_audience),
        })
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            idle: Duration::from_secs(self.idle_timeout_seconds),
            body: Duration::from_secs(self.body_timeout_seconds),
            database: Duration::from_secs(self.db_timeout_seconds),
            request: Duration::from_secs(self.request_timeout_seconds),
        }
    }

    pub fn rate_limits(&self) -> RateLimits {
        RateLimits::new(
            Rate {
                per_second: self.rate_limit_per_ip,
                burst: self.rate_limit_per_ip_burst,
            },
            Rate {
                per_second: self.rate_limit_per_user,
                burst: self.rate_limit_per_user_burst,
            },
        )
    }
}

/// An optional setting given as the empty string counts as not given.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|value| !value.is_empty())
}

/// How long the adapter waits for clients and for the database before it gives up on them.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A connection without a request in progress (no first byte yet, idle between requests, or headers
    /// still arriving).
    pub idle: Duration,
    /// A request body, from its first byte to its last.
    pub body: Duration,
    /// One database call.
    pub database: Duration,
    /// One request, start to answer.
    pub request: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_drop_creation(flags: &[&str]) -> bool {
        let mut arguments = vec!["dropstock-http", "--database-url", "postgresql://x"];
        arguments.extend_from_slice(flags);
        Config::try_parse_from(arguments)
            .unwrap()
            .open_drop_creation
    }

    #[test]
    fn drop_creation_is_open_only_when_asked_for() {
        assert!(!open_drop_creation(&[]));
        assert!(open_drop_creation(&["--open-drop-creation"]));
        assert!(open_drop_creation(&["--open-drop-creation", "yes"]));
        assert!(!open_drop_creation(&["--open-drop-creation", "0"]));
        assert!(!open_drop_creation(&["--open-drop-creation=false"]));
    }
}

//! Load against a running `dropstock-http`: keep-alive HTTP clients reserving on one hot drop, WebSocket
//! watchers timing the stock feed, and the fixtures and checks both need in the database.

pub mod fixtures;
pub mod http;
pub mod latency;
pub mod limits;
pub mod reserve;
pub mod rss;
pub mod watch;

use std::fmt::Write;

/// The last line a load binary prints: `result: name=value …`, which `tests/bench/bench.sh` reads.
#[derive(Default)]
pub struct ResultLine(String);

impl ResultLine {
    pub fn add(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = write!(self.0, " {name}={value}");
        self
    }

    /// A duration in milliseconds with one decimal, the unit and precision of every latency bench.sh reads.
    pub fn add_ms(&mut self, name: &str, value: std::time::Duration) -> &mut Self {
        self.add(name, format!("{:.1}", latency::millis(value)))
    }

    pub fn print(&self) {
        println!("result:{}", self.0);
    }
}

/// The adapter's address from a base URL such as `http://127.0.0.1:8080`; only IP addresses, since the
/// load stays on this machine's loopback.
pub fn adapter_address(url: &str) -> Result<std::net::SocketAddr, String> {
    let authority = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    authority
        .parse()
        .map_err(|_| format!("{url} is not http://<ip>:<port>"))
}

/// A runtime with `threads` workers: the load shares the machine with the adapter and PostgreSQL, so it
/// should take no more of it than it needs.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
}

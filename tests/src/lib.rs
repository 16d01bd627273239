//! What the integration tests (`tests/sql`, `tests/http`, `tests/faults`) and the load generators in
//! `bench/` (`dropstock-load`, `dropstock-watch`) share, one module per job:
//!
//! - `db`: connections to the test cluster, buyers, drops, holds, stock and its invariant, SQLSTATEs,
//!   polling with a deadline, LISTEN.
//! - `adapter`: the `dropstock-http` process, its HTTP and WebSocket clients, a relay to cut it off.
//! - `faults`: stopping and starting clusters, throwaway clusters, killing the worker or a backend.
//! - `pooler`: PgBouncer in front of the test cluster, for the adapter behind a pooler.
//! - `shoppers`: honest buyers under a fault, and the audit of what they were told against the rows.
//! - `figures`: the reliability figures kept in `target/reliability.txt`.
//! - `load`: the load generators' clients, fixtures and reports, for `make bench`.

pub mod adapter;
pub mod db;
pub mod faults;
pub mod figures;
pub mod load;
pub mod pooler;
pub mod shoppers;

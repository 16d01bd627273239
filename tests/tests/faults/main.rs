//! The whole system under faults: PostgreSQL, the worker, the adapter's LISTEN backend or the adapter
//! itself going away while honest buyers shop through a real adapter. These tests stop the cluster
//! they run against (DROPSTOCK_PGDATA), so they run one at a time.

mod database;
mod under_load;

//! The SQL API and the background worker over real connections to the test cluster: what many clients at
//! once, application roles and the worker (also on a bad day, in throwaway clusters) do to the stock.
//! DATABASE_URL picks the cluster; `make integration-test` runs them one at a time.

mod access;
mod concurrency;
mod distribution;
mod races;
mod waitlist;
mod worker;
mod worker_faults;

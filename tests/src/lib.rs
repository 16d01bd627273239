//! Shared code of the load generators in `bench/` (`dropstock-load`, `dropstock-watch`), which
//! `make bench` runs against a live adapter. The integration tests keep their helpers in their own files.

pub mod load;

//! Shared helpers live in the test files; this crate exists for its integration tests.

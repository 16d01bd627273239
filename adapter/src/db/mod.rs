pub mod batching;
pub mod models;
pub mod queries;

pub use queries::*;

//! The database side: the pool and its start-up checks, one function per SQL call, the batcher
//! of holds, the sold-out shortcut, and the JSON views the rows are read into.

use deadpool_postgres::PoolError;

pub mod batching;
pub mod models;
pub mod pool;
pub mod queries;
pub mod sold_out;

/// What a database call failed with; `http::errors` turns it into a status and a message for people.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// A row that does not have the shape the API's functions promise: a fault of ours.
    #[error("unexpected answer from the database: {0}")]
    Shape(String),
    /// The database did not answer a call within the deadline.
    #[error("no answer from the database within {0:?}")]
    Timeout(std::time::Duration),
}

//! The HTTP side: the server, the router and what it needs to turn a request into a response.

pub mod access;
pub mod connections;
pub mod cors;
pub mod errors;
pub mod health;
pub mod input;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod respond;
pub mod routes;
pub mod server;

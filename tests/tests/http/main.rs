//! The adapter end to end: the real `dropstock-http` process (DROPSTOCK_HTTP_BIN) against the test
//! cluster, through its REST API and its WebSocket feed, with honest, hostile and abusive clients.

mod access;
mod batching;
mod connections;
mod feed;
mod hostile_input;
mod rate_limits;
mod rest;
mod scale_out;
mod sold_out;
mod waitlist;

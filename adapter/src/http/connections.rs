//! The cap on open client connections: a flood of connections (idle or not) gets a clear 503 instead of
//! exhausting the process's file descriptors, where `accept` would fail and refuse every buyer alike.
//!
//! `limit` connections are served normally. A few more (`HEALTH_ROOM`) are let in to answer `/healthz`
//! and `/metrics` only, so a load balancer can still see the adapter is alive while it is full; every
//! other request on them gets 503 and the connection is closed. Beyond those, a connection gets a
//! canned 503 written straight to the socket and is closed: gently for up to `REFUSING_ROOM` at once
//! (the request is read and dropped for a moment, so the close does not reset the connection before the
//! client reads the answer), at once beyond that.
//!
//! A connection's slot is held by its task and, once a request upgrades it to a WebSocket, by the socket's
//! task too: it is free when both are done.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections beyond the cap that may still ask `/healthz`.
pub const HEALTH_ROOM: usize = 64;

/// Refused connections closed gently at once.
pub const REFUSING_ROOM: usize = 256;

/// File descriptors the process needs besides client connections: the pool, the LISTEN connection, the
/// listening socket, the runtime's own, and logs.
const OTHER_FILES: u64 = 128;

/// The canned answer for a connection that cannot even be served for health checks.
pub const FULL_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\ncontent-length: 99\r\nconnection: close\r\nretry-after: 1\r\n\r\n\
{\"success\":false,\"message\":\"the server is at its connection limit; try again\",\"code\":\"unavailable\"}";

/// One connection's place under the cap. Put into each request's extensions, so a WebSocket keeps it.
#[derive(Debug, Clone)]
pub struct Slot(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Marks the requests of a connection let in beyond the cap: only health checks and metrics are answered.
#[derive(Debug, Clone, Copy)]
pub struct BeyondCap;

/// What a new connection gets.
pub enum Admission {
    Served(Slot),
    HealthOnly(Slot),
    /// The canned 503; with a slot, closed gently.
    Refused(Option<Slot>),
}

pub struct ConnectionCap {
    limit: usize,
    served: Arc<Semaphore>,
    health_only: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
}

impl ConnectionCap {
    /// A cap of `requested` connections, lowered to what the process's open-files limit allows once
    /// raised as far as it goes (`pool_size` database connections come on top of client connections).
    pub fn fitted(requested: usize, pool_size: usize) -> Self {
        let available = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(files) => files.saturating_sub(
                OTHER_FILES + pool_size as u64 + (HEALTH_ROOM + REFUSING_ROOM) as u64,
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot read the open-files limit; the connection cap is not checked against it");
                u64::MAX
            }
        };
        let limit = if (requested as u64) <= available {
            requested
        } else {
            let limit = usize::try_from(available).unwrap_or(usize::MAX).max(1);
            tracing::warn!(
                requested,
                limit,
                "the open-files limit (ulimit -n) leaves room for fewer connections than DROPSTOCK_MAX_CONNECTIONS; \
                 capping at {limit}: raise the limit to serve more"
            );
            limit
        };
        ConnectionCap {
            limit,
            served: Arc::new(Semaphore::new(limit)),
            health_only: Arc::new(Semaphore::new(HEALTH_ROOM)),
            refusing: Arc::new(Semaphore::new(REFUSING_ROOM)),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections open now, WebSocket clients included (health-only ones not).
    pub fn open(&self) -> usize {
        self.limit - self.served.available_permits()
    }

    pub fn admit(&self) -> Admission {
        if let Ok(permit) = self.served.clone().try_acquire_owned() {
            return Admission::Served(Slot(Arc::new(permit)));
        }
        if let Ok(permit) = self.health_only.clone().try_acquire_owned() {
            return Admission::HealthOnly(Slot(Arc::new(permit)));
        }
        let gently = self.refusing.clone().try_acquire_owned().ok();
        Admission::Refused(gently.map(|permit| Slot(Arc::new(permit))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_up_to_the_cap_then_health_checks_then_refuses() {
        let cap = ConnectionCap {
            limit: 2,
            served: Arc::new(Semaphore::new(2)),
            health_only: Arc::new(Semaphore::new(1)),
            refusing: Arc::new(Semaphore::new(1)),
        };
        let first = cap.admit();
        let second = cap.admit();
        assert!(matches!(first, Admission::Served(_)));
        assert!(matches!(second, Admission::Served(_)));
        assert_eq!(cap.open(), 2);
        let third = cap.admit();
        assert!(matches!(third, Admission::HealthOnly(_)));
        let gently = cap.admit();
        assert!(matches!(gently, Admission::Refused(Some(_))));
        assert!(matches!(cap.admit(), Admission::Refused(None)));
        drop(first);
        assert_eq!(cap.open(), 1);
        assert!(matches!(cap.admit(), Admission::Served(_)));
    }

    #[test]
    fn the_canned_answer_declares_its_length() {
        let text = std::str::from_utf8(FULL_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}

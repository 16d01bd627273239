//! Prometheus metrics for `GET /metrics`: requests by route and status, request latency, connected
//! WebSocket and Socket.IO clients and what the feed relayed.

use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::db::batching::BatchMetrics;

/// Routes are labelled by their pattern (`/api/drops/{id}`), never the raw path, so a client sending random
/// paths cannot grow the label set.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    pub ws_clients: Gauge,
    pub socketio_clients: Gauge,
    pub notices: Counter,
    pub bad_notices: Counter,
    pub resyncs: Counter,
    pub slow_clients_dropped: Counter,
    pub listen_reconnects: Counter,
    pub connections_refused: Counter,
    pub health_checks: Counter,
    pub batching: BatchMetrics,
    pub sold_out_shortcut: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 4 s: reserving takes about a millisecond, a pool wait may take seconds.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dropstock_http");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer an HTTP request, by route",
            latency.clone(),
        );
        let ws_clients = Gauge::default();
        registry.register(
            "websocket_clients",
            "WebSocket clients connected now",
            ws_clients.clone(),
        );
        let socketio_clients = Gauge::default();
        registry.register(
            "socketio_clients",
            "Socket.IO clients connected now (either transport)",
            socketio_clients.clone(),
        );
        let notices = Counter::default();
        registry.register(
            "notifications_relayed",
            "Stock notifications received on LISTEN dropstock and relayed to clients",
            notices.clone(),
        );
        let bad_notices = Counter::default();
        registry.register(
            "notifications_rejected",
            "Notifications on LISTEN dropstock whose payload could not be read",
            bad_notices.clone(),
        );
        let resyncs = Counter::default();
        registry.register(
            "resyncs_sent",
            "resync messages sent to WebSocket clients (LISTEN reconnected, or the client fell behind)",
            resyncs.clone(),
        );
        let slow_clients_dropped = Counter::default();
        registry.register(
            "websocket_clients_dropped",
            "WebSocket clients disconnected because their socket did not drain",
            slow_clients_dropped.clone(),
        );
        let listen_reconnects = Counter::default();
        registry.register(
            "listen_reconnects",
            "Times the LISTEN connection was re-established after being lost",
            listen_reconnects.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_over_cap",
            "Client connections that arrived while the connection cap was reached (answered 503)",
            connections_refused.clone(),
        );
        let health_checks = Counter::default();
        registry.register(
            "database_health_checks",
            "Database checks made for /healthz (at most about one a second, however often it is asked)",
            health_checks.clone(),
        );
        let batching = BatchMetrics::default();
        registry.register(
            "reservation_queues",
            "Drops with a reservation batching queue open now (at most 1,024)",
            batching.queues.clone(),
        );
        registry.register(
            "reservations_queued",
            "Reservations waiting in a batching queue now, for a batch to take them",
            batching.queued.clone(),
        );
        registry.register(
            "reservation_flushers",
            "Reservation batches this adapter may have in flight now, over all drops: per drop, at \
             most its share of the drop's batch turns",
            batching.flushers.clone(),
        );
        registry.register(
            "reservation_flushers_started",
            "Reservation flushers started: one when a drop's queue opens, and one more each time a \
             batch leaves buyers behind while the adapter's share of the drop's turns allows one",
            batching.flushers_started.clone(),
        );
        let sold_out_shortcut = Counter::default();
        registry.register(
            "sold_out_shortcut_answers",
            "Reservations answered \"sold out\" from the feed, without a database call",
            sold_out_shortcut.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            ws_clients,
            socketio_clients,
            notices,
            bad_notices,
            resyncs,
            slow_clients_dropped,
            listen_reconnects,
            connections_refused,
            health_checks,
            batching,
            sold_out_shortcut,
        }
    }

    pub fn observe(
        &self,
        method: &Method,
        route: &'static str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::OPTIONS => "OPTIONS",
            Method::HEAD => "HEAD",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            _ => "OTHER",
        };
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: status.as_u16(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text exposition, which Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

//! `GET /healthz`: whether the database answers and has the extension, and whether the feed is live.
//!
//! Load balancers probe often and are not rate-limited, so the database check is made at most once per
//! `FRESH_FOR` and its answer shared: a flood of probes costs one pooled connection a second, not the pool.
//! A request that finds the database unavailable drops the shared answer, so probes never say "ok" about
//! a database requests have just found down.

use std::time::Duration;

use http::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::app::App;
use crate::db::queries;
use crate::http::errors::ApiError;
use crate::http::respond::{self, Body};

/// How long one database check answers for.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The last database check: when it was made, and the refusal it came to, if any.
#[derive(Default)]
pub struct HealthCheck {
    last: Mutex<Option<(Instant, Result<(), ApiError>)>>,
}

impl HealthCheck {
    /// The database's state, checked anew when the last check is older than `FRESH_FOR`. Probes that
    /// arrive while a check runs wait for it rather than start their own.
    async fn database(&self, app: &App) -> Result<(), ApiError> {
        let mut last = self.last.lock().await;
        if let Some((at, outcome)) = &*last {
            if at.elapsed() < FRESH_FOR {
                return outcome.clone();
            }
        }
        let outcome = check(app).await;
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }

    /// Drops the last check, so the next probe checks anew: a request just found the database
    /// unavailable, and a probe must not report it healthy from an older check.
    pub fn forget(&self) {
        // A check running now reports the database as it is; nothing to forget then.
        if let Ok(mut last) = self.last.try_lock() {
            *last = None;
        }
    }
}

async fn check(app: &App) -> Result<(), ApiError> {
    app.metrics.health_checks.inc();
    let client = app.pool.connection().await?;
    if !queries::extension_installed(&client).await? {
        return Err(ApiError::unavailable(
            "the dropstock extension is not installed in the database",
        ));
    }
    Ok(())
}

pub async fn answer(app: &App) -> Result<Response<Body>, ApiError> {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
        database: &'static str,
        listening: bool,
    }
    app.health.database(app).await?;
    Ok(respond::success(
        StatusCode::OK,
        Health {
            status: "ok",
            database: "ok",
            // Requests are served without LISTEN; only the live feed waits for it.
            listening: app.hub.is_listening(),
        },
    ))
}

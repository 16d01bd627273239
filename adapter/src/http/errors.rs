//! One error type for every request, turned into the `{success: false, message, code}` envelope in one place,
//! and the table that maps the extension's SQLSTATEs to HTTP statuses.

use std::borrow::Cow;

use deadpool_postgres::PoolError;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::db::DbError;
use crate::http::respond::{self, Body};

/// What a request failed with. `message` is shown to the client, so it is always written for people and
/// never carries internals; `code` is stable for programs to match on (the SQLSTATE when the database
/// refused the request).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// For 405: the methods the route does take.
    allow: Option<&'static str>,
    /// For 401: ask for a bearer token.
    challenge: bool,
    /// For 429: seconds until a retry can succeed.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            allow: None,
            challenge: false,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            challenge: true,
            ..Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(method: &http::Method, path: &str, allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} does not take {method}; it takes {allow}"),
            )
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {} KiB", limit / 1024),
        )
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_seconds),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be JSON: send 'Content-Type: application/json'",
        )
    }

    pub fn body_timeout(deadline: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            ),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A fault of ours, not the client's. The detail goes to the log only: a 500 must not leak
    /// table names, queries or connection strings.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    pub fn into_response(self) -> Response<Body> {
        #[derive(Serialize)]
        struct Failure<'a> {
            success: bool,
            message: &'a str,
            code: &'a str,
        }
        let mut response = respond::json(
            self.status,
            &Failure {
                success: false,
                message: &self.message,
                code: &self.code,
            },
        );
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNSUPPORTED_MEDIA_TYPE
                | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body was never read and still sits in the connection: close it, so the
            // client does not send its next request down a connection the server is about to drop.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The HTTP status for each refusal the extension can raise. Choices where the issue left two options:
/// - DS010 not started → 409: the request is fine but the drop is not in a state to take it yet. 425 is
///   about replayed TLS early data, and clients and proxies treat it as "retry the same bytes".
/// - DS011 ended, DS030 hold expired, DS032 hold cancelled → 410: what was asked for is gone for good;
///   the client must start over (reserve again), not retry.
/// - DS021 limit reached → 409: 429 tells clients and proxies to back off and retry, and a retry can
///   never succeed here.
/// - DS012 no size named, DS013 no such size → 422, as the extension's other argument checks (22023):
///   the request names the drop rightly but asks for something it does not sell.
/// - DS014 (a draw drop: enter the draw), DS015 (not a draw), DS023 (units are free: reserve them),
///   DS024 (the buyer already holds one), DS025 (the buyer is in the line: their turn comes as an offer)
///   → 409: the request is well formed, but the drop's mode or state
///   calls for another request, which the message names.
/// - DS016 already drawn → 409, DS017 entries still open → 409, as DS010: not now, or not again.
/// - DS022 cooldown → 429 with `Retry-After`: unlike DS021, the same request succeeds once the cooldown
///   is over, and `Retry-After` says when (read from the refusal's DETAIL).
pub fn status_for_sqlstate(sqlstate: &str) -> Option<StatusCode> {
    let status = match sqlstate {
        "DS001" | "DS002" | "DS003" => StatusCode::NOT_FOUND,
        "DS010" => StatusCode::CONFLICT,
        "DS011" => StatusCode::GONE,
        "DS020" | "DS021" => StatusCode::CONFLICT,
        "DS030" | "DS032" => StatusCode::GONE,
        "DS031" => StatusCode::FORBIDDEN,
        "DS033" | "DS034" | "DS040" | "DS041" => StatusCode::CONFLICT,
        "DS012" | "DS013" => StatusCode::UNPROCESSABLE_ENTITY,
        "DS014" | "DS015" | "DS016" | "DS017" | "DS023" | "DS024" | "DS025" => StatusCode::CONFLICT,
        "DS022" => StatusCode::TOO_MANY_REQUESTS,
        // invalid_parameter_value: the extension's own argument checks.
        "22023" => StatusCode::UNPROCESSABLE_ENTITY,
        // A lock wait ran out (lock_not_available, only under an operator's lock_timeout), or the
        // database rolled the call back (serialization_failure, deadlock_detected) even after the
        // adapter retried it: nothing is wrong with the request, so "try again", never a 500.
        "55P03" | "40001" | "40P01" => StatusCode::SERVICE_UNAVAILABLE,
        _ => return None,
    };
    Some(status)
}

/// SQLSTATEs that mean "the database cannot serve right now", not "the request is wrong":
/// connection exceptions (08), operator intervention such as a shutdown (57P) or a call cancelled by
/// `statement_timeout` (57014, a stalled database), too many connections.
fn is_unavailable_sqlstate(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("57P")
        || sqlstate == "57014"
        || sqlstate == "53300"
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Pool(PoolError::Backend(error)) => match error.as_db_error() {
                Some(_) => from_postgres(error),
                // Opening a new connection failed before the server said anything.
                None => {
                    tracing::warn!(%error, "cannot connect to the database");
                    ApiError::unavailable("the database is unavailable; try again shortly")
                }
            },
            DbError::Pool(PoolError::Timeout(kind)) => {
                tracing::warn!(?kind, "timed out waiting for a database connection");
                ApiError::unavailable("the database is busy or unavailable; try again shortly")
            }
            DbError::Pool(PoolError::Closed) => {
                ApiError::unavailable("the adapter is shutting down")
            }
            DbError::Pool(other) => ApiError::internal(&other),
            DbError::Postgres(error) => from_postgres(error),
            DbError::Shape(detail) => ApiError::internal(&detail),
            DbError::Timeout(deadline) => {
                tracing::warn!(?deadline, "the database did not answer in time");
                ApiError::unavailable(format!(
                    "the database did not answer within {} s; try again shortly",
                    deadline.as_secs()
                ))
            }
        }
    }
}

impl ApiError {
    /// A refusal the extension reported as a SQLSTATE and message, as `reserve_items` does per buyer.
    pub fn from_sqlstate(sqlstate: &str, message: &str) -> Self {
        match status_for_sqlstate(sqlstate) {
            Some(status) => ApiError {
                // The cooldown's message ends with when it is over.
                retry_after: (sqlstate == "DS022")
                    .then(|| seconds_until(message))
                    .flatten(),
                ..ApiError::new(status, sqlstate.to_owned(), message)
            },
            None => ApiError::internal(&format_args!("SQLSTATE {sqlstate}: {message}")),
        }
    }
}

/// Whole seconds (rounded up, at least 1) from now until the time a cooldown refusal names, as
/// PostgreSQL writes a timestamptz (`… again from 2026-11-28 08:50:00.123+00`, or that time alone).
fn seconds_until(message: &str) -> Option<u64> {
    let at = message
        .char_indices()
        .filter(|(_, c)| c.is_ascii_digit())
        .find_map(|(start, _)| {
            let text = message[start..].trim_end_matches('.');
            chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok()
        })?;
    let millis = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
    Some(u64::try_from(millis).unwrap_or(0).div_ceil(1000).max(1))
}

fn from_postgres(error: tokio_postgres::Error) -> ApiError {
    if let Some(db) = error.as_db_error() {
        let sqlstate = db.code().code();
        if status_for_sqlstate(sqlstate).is_some() {
            let mut refusal = ApiError::from_sqlstate(sqlstate, db.message());
            // reserve_item's cooldown carries its time alone as DETAIL (reserve_items' rows, the
            // message only).
            if sqlstate == "DS022" {
                if let Some(seconds) = db.detail().and_then(seconds_until) {
                    refusal.retry_after = Some(seconds);
                }
            }
            return refusal;
        }
        if is_unavailable_sqlstate(sqlstate) {
            tracing::warn!(sqlstate, message = db.message(), "database unavailable");
            return ApiError::unavailable("the database is unavailable; try again shortly");
        }
        return ApiError::internal(&format_args!("SQLSTATE {sqlstate}: {}", db.message()));
    }
    if error.is_closed()
        || std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>())
    {
        tracing::warn!(%error, "database connection lost");
        return ApiError::unavailable("the database is unavailable; try again shortly");
    }
    ApiError::internal(&error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_when_a_cooldown_ends() {
        let at = chrono::Utc::now() + chrono::Duration::milliseconds(41_500);
        let message = format!(
            "your hold on drop \"x 12:00\" ended while others were waiting: you may reserve it again from {}",
            at.format("%Y-%m-%d %H:%M:%S%.f+00")
        );
        assert_eq!(seconds_until(&message), Some(42));
        let error = ApiError::from_sqlstate("DS022", &message);
        assert_eq!(error.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(error.retry_after, Some(42));
        assert_eq!(seconds_until("no time here"), None);
    }
}

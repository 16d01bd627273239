//! Writing responses: the success envelope, JSON, text and empty bodies. Reading requests is `input`'s
//! job, so this module depends on nothing else in the adapter and everything can answer through it.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// Every response body the adapter sends is complete before it is sent: the largest is the drop list.
pub type Body = Full<Bytes>;

#[derive(Serialize)]
struct Success<'a, T> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    data: T,
}

/// `{"success": true, "data": …}`, the envelope clients of the replaced API expect.
pub fn success<T: Serialize>(status: StatusCode, data: T) -> Response<Body> {
    json(
        status,
        &Success {
            success: true,
            message: None,
            data,
        },
    )
}

/// The envelope with a `message` beside the data (`"Purchased successfully"`).
pub fn success_with_message<T: Serialize>(
    status: StatusCode,
    message: &str,
    data: T,
) -> Response<Body> {
    json(
        status,
        &Success {
            success: true,
            message: Some(message),
            data,
        },
    )
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    // Serialising our own plain structs cannot fail; if it ever did, an empty object beats a panic.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    with_type(status, "application/json", body)
}

pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

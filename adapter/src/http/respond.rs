//! Small helpers for HTTP bodies: the success envelope, JSON and text responses, and reading a JSON
//! request body within the size limit.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::http::errors::ApiError;

/// Every response body the adapter sends is complete before it is sent: the largest is the drop list.
pub type Body = Full<Bytes>;

/// Request bodies are a handful of ids and names; anything bigger is a mistake or an attack.
pub const BODY_LIMIT: usize = 64 * 1024;

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

/// Reads the body as a JSON object. A declared length over the limit is refused before reading a byte;
/// a body that streams past the limit is cut off there, so memory per request stays bounded.
pub async fn read_json_object(
    body: Incoming,
    declared_length: Option<u64>,
) -> Result<Map<String, Value>, ApiError> {
    if declared_length.is_some_and(|length| length > BODY_LIMIT as u64) {
        return Err(ApiError::payload_too_large(BODY_LIMIT));
    }
    let bytes = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<LengthLimitError>() => {
            return Err(ApiError::payload_too_large(BODY_LIMIT))
        }
        Err(error) => {
            return Err(ApiError::bad_request(format!(
                "could not read the request body: {error}"
            )))
        }
    };
    // No body at all reads as `{}`, so the answer names the first missing field.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
        Err(error) => Err(ApiError::bad_request(format!(
            "request body is not valid JSON: {error}"
        ))),
    }
}

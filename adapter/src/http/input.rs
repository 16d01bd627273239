//! Reading requests: a JSON body within the size limit, its fields one by one with a 400 that names the
//! field whenever one is missing or of the wrong type, and the query of `/ws`. Values that are well-formed but out of range (a negative price) are left to the
//! extension, which refuses them with SQLSTATE 22023 and a message of its own.

use chrono::{DateTime, NaiveDateTime, Utc};
use std::time::Duration;

use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::http::errors::ApiError;

/// Request bodies are a handful of ids and names; anything bigger is a mistake or an attack.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The request body of a POST, field by field.
pub struct Fields(pub Map<String, Value>);

impl Fields {
    /// Reads the request's body, which must be a JSON object sent as `application/json` (an empty body
    /// reads as `{}` and needs no type), in full within `deadline`.
    ///
    /// The type is what keeps other websites out: a page elsewhere can make a browser POST `text/plain`
    /// or a form here without asking (no CORS preflight), but not `application/json`.
    pub async fn read(request: Request<Incoming>, deadline: Duration) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        if content_type.is_some_and(|value| !is_json(value)) {
            return Err(ApiError::unsupported_media_type());
        }
        let object = tokio::time::timeout(deadline, read_json_object(body, declared))
            .await
            .map_err(|_| ApiError::body_timeout(deadline))??;
        if content_type.is_none() && !object.is_empty() {
            return Err(ApiError::unsupported_media_type());
        }
        Ok(Fields(object))
    }

    /// A present, non-null field. `null` counts as missing, as it did in the replaced API.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    fn missing(name: &str) -> ApiError {
        ApiError::bad_request(format!("{name} is required"))
    }

    pub fn uuid(&self, name: &str) -> Result<Uuid, ApiError> {
        self.optional_uuid(name)?.ok_or_else(|| Self::missing(name))
    }

    pub fn optional_uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => parse_uuid(name, text).map(Some),
            Some(_) => Err(ApiError::bad_request(format!(
                "{name} must be a UUID string"
            ))),
        }
    }

    pub fn string(&self, name: &str) -> Result<String, ApiError> {
        match self.get(name) {
            None => Err(Self::missing(name)),
            // PostgreSQL text cannot hold NUL: refused here, it would otherwise come back as a 500.
            Some(Value::String(text)) if text.contains('\0') => Err(ApiError::bad_request(
                format!("{name} must not contain NUL characters"),
            )),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
        }
    }

    /// A JSON number, returned in its shortest decimal spelling for SQL `numeric`.
    pub fn decimal(&self, name: &str) -> Result<String, ApiError> {
        match self.get(name) {
            None => Err(Self::missing(name)),
            Some(Value::Number(number)) => Ok(number.to_string()),
            Some(_) => Err(ApiError::bad_request(format!("{name} must be a number"))),
        }
    }

    pub fn integer(&self, name: &str) -> Result<i32, ApiError> {
        self.optional_integer(name)?
            .ok_or_else(|| Self::missing(name))
    }

    pub fn optional_integer(&self, name: &str) -> Result<Option<i32>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let whole = value.as_i64().or_else(|| {
            // 5.0 is a whole number too, as JavaScript clients may send it.
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        });
        match whole.map(i32::try_from) {
            Some(Ok(number)) => Ok(Some(number)),
            Some(Err(_)) => Err(ApiError::bad_request(format!(
                "{name} is out of range (at most {})",
                i32::MAX
            ))),
            None => Err(ApiError::bad_request(format!(
                "{name} must be a whole number"
            ))),
        }
    }

    pub fn optional_string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.string(name).map(Some),
        }
    }

    /// A JSON array of strings (`variants: ["US 8", "US 9"]`).
    pub fn optional_strings(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let wrong = || ApiError::bad_request(format!("{name} must be a list of strings"));
        let items = value.as_array().ok_or_else(wrong)?;
        items
            .iter()
            .map(|item| match item {
                Value::String(text) if text.contains('\0') => Err(ApiError::bad_request(format!(
                    "{name} must not contain NUL characters"
                ))),
                Value::String(text) => Ok(text.clone()),
                _ => Err(wrong()),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// A JSON object, returned as its JSON text for a `jsonb` argument; its members are the extension's
    /// to check.
    pub fn optional_object(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(object @ Value::Object(_)) => Ok(Some(object.to_string())),
            Some(_) => Err(ApiError::bad_request(format!("{name} must be an object"))),
        }
    }

    pub fn optional_timestamp(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => parse_timestamp(text).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be an RFC 3339 timestamp (2026-11-27T21:30:00Z) or \"DD-MM-YYYY, hh:mm A\" \
                     (27-11-2026, 09:30 PM, UTC)"
                ))
            }),
            Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
        }
    }
}

/// Reads the body as a JSON object. A declared length over the limit is refused before reading a byte;
/// a body that streams past the limit is cut off there, so memory per request stays bounded.
async fn read_json_object(
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

/// `application/json`, or a `+json` type (`application/merge-patch+json`), whatever its parameters.
fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub fn parse_uuid(name: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text.trim())
        .map_err(|_| ApiError::bad_request(format!("{name} must be a UUID, got {text:?}")))
}

/// The `drop` query parameter of `/ws`, if any: the client wants one drop's feed only.
pub fn drop_filter(query: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    query_value(query, "drop")
        .map(|value| parse_uuid("drop", &value))
        .transpose()
}

/// A query parameter's value, percent-decoded; the first if it is given twice.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

/// `%XX` and `+` as a browser's `URLSearchParams` writes them; a malformed escape stays as it is.
fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| (byte as char).to_digit(16);
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some((high, low)), _) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
            (None, b'+') => decoded.push(b' '),
            (None, byte) => decoded.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// RFC 3339, or the replaced API's `"DD-MM-YYYY, hh:mm A"`, which carries no zone and is read as UTC.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%d-%m-%Y, %I:%M %p")
        .ok()
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_start_time_spellings() {
        let rfc = parse_timestamp("2026-11-27T21:30:00+01:00").unwrap();
        assert_eq!(rfc.to_rfc3339(), "2026-11-27T20:30:00+00:00");
        let legacy = parse_timestamp("27-11-2026, 09:30 PM").unwrap();
        assert_eq!(legacy.to_rfc3339(), "2026-11-27T21:30:00+00:00");
        let morning = parse_timestamp("01-02-2027, 12:05 am").unwrap();
        assert_eq!(morning.to_rfc3339(), "2027-02-01T00:05:00+00:00");
        assert!(parse_timestamp("tomorrow").is_none());
        assert!(parse_timestamp("31-02-2026, 09:30 PM").is_none());
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"userId": 5, "totalStock": 1.5, "dropId": "nope"}"#).unwrap();
        let fields = Fields(body);
        assert_eq!(
            fields.uuid("userId").unwrap_err().message,
            "userId must be a UUID string"
        );
        assert_eq!(
            fields.integer("totalStock").unwrap_err().message,
            "totalStock must be a whole number"
        );
        assert!(fields
            .uuid("dropId")
            .unwrap_err()
            .message
            .starts_with("dropId must be a UUID"));
        assert_eq!(
            fields.string("name").unwrap_err().message,
            "name is required"
        );
        let nul = Fields(serde_json::from_str(r#"{"name": "a\u0000b"}"#).unwrap());
        assert_eq!(
            nul.string("name").unwrap_err().message,
            "name must not contain NUL characters"
        );
    }

    #[test]
    fn takes_json_types_only() {
        let json = |text: &'static str| is_json(&HeaderValue::from_static(text));
        assert!(json("application/json"));
        assert!(json("Application/JSON; charset=utf-8"));
        assert!(json("application/merge-patch+json"));
        assert!(!json("text/plain"));
        assert!(!json("application/x-www-form-urlencoded"));
        assert!(!json("multipart/form-data; boundary=x"));
        assert!(!json("text/json+plain"));
    }

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            query_value(Some("a=1&key=a%2Fb+c%zz"), "key").as_deref(),
            Some("a/b c%zz")
        );
        assert_eq!(query_value(Some("key"), "key"), None);
        assert_eq!(query_value(None, "key"), None);
    }

    #[test]
    fn reads_the_drop_filter() {
        assert_eq!(drop_filter(None).unwrap(), None);
        assert_eq!(drop_filter(Some("x=1")).unwrap(), None);
        let id = Uuid::new_v4();
        assert_eq!(
            drop_filter(Some(&format!("x=1&drop={id}"))).unwrap(),
            Some(id)
        );
        assert_eq!(
            drop_filter(Some("drop=42")).unwrap_err().status,
            http::StatusCode::BAD_REQUEST
        );
    }
}

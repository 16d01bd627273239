//! Cross-origin access for browsers, from the allow-list in DROPSTOCK_CORS_ORIGINS. Without a list, no
//! cross-origin headers are sent and browsers keep other sites' pages from calling the API.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::http::errors::ApiError;
use crate::http::respond::{self, Body};

pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    pub fn new(origins: &[String]) -> Self {
        let origins: Vec<String> = origins
            .iter()
            .map(|origin| origin.trim().trim_end_matches('/').to_owned())
            .filter(|origin| !origin.is_empty())
            .collect();
        Cors {
            any: origins.iter().any(|origin| origin == "*"),
            origins,
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.any
            || self
                .origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    /// Whether a browser page may open the WebSocket feed. WebSockets are not covered by CORS (any page
    /// can open one), so with an allow-list set, `/ws` checks `Origin` itself: the adapter's own pages and
    /// the listed origins only. Clients that are not browsers send no `Origin` and are let in.
    pub fn allows_socket(&self, headers: &HeaderMap) -> bool {
        if self.origins.is_empty() || self.any {
            return true;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let same_origin = match (
            origin.to_str(),
            headers.get(header::HOST).map(HeaderValue::to_str),
        ) {
            (Ok(origin), Some(Ok(host))) => origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
            _ => false,
        };
        same_origin || self.allows(origin)
    }

    /// Marks a response readable by the requesting page when its origin is on the list. The origin is
    /// echoed rather than `*` so that pages may send `Authorization` (credentialed requests).
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut Response<Body>) {
        let headers = response.headers_mut();
        if !self.origins.is_empty() {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(origin) = origin.filter(|origin| self.allows(origin)) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
    }

    /// Answers `OPTIONS`: a browser's preflight when it names a method to ask about, else the plain
    /// list of methods the route takes.
    pub fn preflight(
        &self,
        request: &HeaderMap,
        allow: &'static str,
    ) -> Result<Response<Body>, ApiError> {
        let mut response = respond::empty(StatusCode::NO_CONTENT);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        let (Some(origin), true) = (
            request.get(header::ORIGIN),
            request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD),
        ) else {
            return Ok(response);
        };
        if !self.allows(origin) {
            return Err(ApiError::forbidden(format!(
                "origin {} may not call this API (see DROPSTOCK_CORS_ORIGINS)",
                origin.to_str().unwrap_or("?")
            )));
        }
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(allow),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        Ok(response)
    }
}

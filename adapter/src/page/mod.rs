//! The drop page served at `/`, and its assets under `/page/`. The files are compiled into the binary, so
//! one executable is all a deployment needs.

use http::{header, HeaderValue, Response, StatusCode};

use crate::error::ApiError;
use crate::respond::{self, Body};

const INDEX: &str = include_str!("index.html");

/// Assets the page loads, by file name under `/page/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("app.js"),
    ),
];

pub fn index() -> Response<Body> {
    respond::with_type(StatusCode::OK, "text/html; charset=utf-8", INDEX)
}

pub fn asset(name: &str) -> Result<Response<Body>, ApiError> {
    let (_, content_type, text) = ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .ok_or_else(|| ApiError::not_found(format!("no such page asset: {name}")))?;
    let mut response = respond::with_type(StatusCode::OK, content_type, *text);
    // Assets change only with a new binary; a short cache keeps reloads cheap without serving stale files long.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}

//! The drop page served at `/`, and its assets under `/page/`. The files are compiled into the binary, so
//! one executable is all a deployment needs.

use http::{header, HeaderValue, Response, StatusCode};

use crate::http::errors::ApiError;
use crate::http::respond::{self, Body};

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The page is only as good as its assets: every `/page/…` file the HTML names must be served.
    #[test]
    fn serves_every_asset_the_page_names() {
        let named: Vec<&str> = INDEX
            .split("\"/page/")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(named.contains(&"app.js") && named.contains(&"style.css"));
        for name in named {
            let response = asset(name).unwrap_or_else(|_| panic!("{name} is not served"));
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(asset("nope.js").unwrap_err().status, StatusCode::NOT_FOUND);
    }
}

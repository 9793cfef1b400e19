//! The dashboard's static files, embedded in the binary (it works with no internet):
//! `dashboard/index.html` and what it loads from `/assets/`, the charting library
//! vendored from npm at a pinned version (see `dashboard/vendor/VERSIONS`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every file served, by its path under `/assets/` (and `index.html` at `/`).
const FILES: &[(&str, &str, &[u8])] = &[(
    "index.html",
    "text/html; charset=utf-8",
    include_bytes!("dashboard/index.html"),
)];

/// The file at `path`, or 404.
pub fn asset(path: &str) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

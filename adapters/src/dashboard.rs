//! The dashboard's static files, embedded in the binary (it works with no internet):
//! `dashboard/index.html` and what it loads from `/assets/` (`app.js`, `app.css`), and the
//! charting library, uPlot, vendored from npm at a pinned version with its license (see
//! `dashboard/vendor/VERSIONS`). Plain files, no build step.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file served, by its path under `/assets/` (and `index.html` at `/`).
const FILES: &[(&str, &str, &[u8])] = &[
    ("index.html", HTML, include_bytes!("dashboard/index.html")),
    ("app.js", JS, include_bytes!("dashboard/app.js")),
    ("app.css", CSS, include_bytes!("dashboard/app.css")),
    (
        "vendor/uPlot.iife.min.js",
        JS,
        include_bytes!("dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "vendor/uPlot.min.css",
        CSS,
        include_bytes!("dashboard/vendor/uPlot.min.css"),
    ),
    (
        "vendor/uPlot.LICENSE",
        TEXT,
        include_bytes!("dashboard/vendor/uPlot.LICENSE"),
    ),
    (
        "vendor/VERSIONS",
        TEXT,
        include_bytes!("dashboard/vendor/VERSIONS"),
    ),
];

/// The file at `path`, or 404.
pub fn asset(path: &str) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page references is in the table, and every file of the folder too.
    #[test]
    fn the_table_holds_every_file_and_every_reference() {
        let index = std::str::from_utf8(FILES[0].2).expect("UTF-8");
        for (name, _, _) in &FILES[1..] {
            if name.ends_with(".js") || name.ends_with(".css") {
                assert!(
                    index.contains(&format!("assets/{name}")),
                    "index.html does not load {name}"
                );
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dashboard");
        let mut on_disk = Vec::new();
        for sub in ["", "vendor"] {
            for entry in std::fs::read_dir(dir.join(sub)).expect("the dashboard folder") {
                let entry = entry.expect("an entry");
                if entry.file_type().expect("a type").is_file() {
                    let name = entry.file_name().to_string_lossy().to_string();
                    on_disk.push(if sub.is_empty() {
                        name
                    } else {
                        format!("{sub}/{name}")
                    });
                }
            }
        }
        for name in &on_disk {
            assert!(
                FILES.iter().any(|(n, _, _)| n == name),
                "{name} is not served"
            );
        }
        assert_eq!(asset("nothing.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("app.js").status(), StatusCode::OK);
    }
}

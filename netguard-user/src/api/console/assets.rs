//! The console's files, embedded in the binary (netguard-user/console/): nothing is fetched from
//! anywhere else, and the page works with no internet at all.

use axum::{
    extract::Path,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use crate::api::error::ApiError;

macro_rules! assets {
    ($($name:literal),* $(,)?) => {
        /// Every file under `/console/`, by name.
        pub const FILES: &[(&str, &[u8])] = &[
            $(($name, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $name))),)*
        ];
    };
}

assets!(
    "index.html",
    "style.css",
    "favicon.svg",
    "app.js",
    "api.js",
    "dom.js",
    "live.js",
    "overview.js",
    "lists.js",
    "vms.js",
    "map.js",
    "plot.js",
    "vendor/world-110m.json",
    "vendor/LICENSE-world-atlas.txt",
    "vendor/NATURAL-EARTH.txt",
);

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    }
}

fn serve(name: &str, bytes: &'static [u8]) -> Response {
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    // Revalidated on each load: a daemon upgrade must never leave an old script running.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub async fn index() -> Response {
    file_named("index.html").expect("index.html is embedded")
}

fn file_named(name: &str) -> Option<Response> {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, b)| serve(n, b))
}

pub async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    file_named(&name).ok_or_else(|| ApiError::not_found(format!("no console file `{name}`")))
}

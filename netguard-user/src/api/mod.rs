//! The REST API, WebSocket push and `/metrics` (DESIGN.md, "REST").
//!
//! Every list change goes through [`Control`], so the API, the CLI and automatic responses share one
//! validation and one kernel-then-store order. Errors always have the shape `{"error", "field"}`
//! ([`error::ApiError`]), including axum's own rejections (404, 405, 413, 408), which
//! [`json_errors`] rewrites. Every request's duration is recorded under its matched route template,
//! never its raw path (a path can hold an address).

pub mod alerts_flows;
pub mod auth;
pub mod conns;
pub mod console;
pub mod error;
pub mod events;
pub mod events_body;
pub mod health;
pub mod lists;
pub mod multivm;
pub mod openapi;
pub mod ratelimit;
pub mod request_id;
pub mod responses;
pub mod seed;
pub mod tls;
pub mod trust;
pub mod ws;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    serve::ListenerExt as _,
};
use serde::{Deserialize, Serialize};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use crate::{control::Control, metrics::Metrics};
pub use auth::{AdminToken, Role, TokenConfig, TokenError, Tokens};
pub use error::{ApiError, ErrorBody};

/// Route prefix of the REST API.
pub const PREFIX: &str = "/api/v1";
/// Default listen address: loopback only, so that a fresh install exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9740";

/// `[api]` in the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Largest request body in bytes (a 100,000-entry bulk import is about 5 MB).
    pub body_limit: usize,
    /// Longest a request may take before it is answered 408, e.g. "30s".
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Extra tokens: `[[api.tokens]] name, role, token`.
    pub tokens: Vec<TokenConfig>,
    /// Push messages a WebSocket client may fall behind before it is disconnected.
    pub ws_queue: usize,
    /// Ping period; a client that answers nothing for three periods is dropped.
    #[serde(with = "duration_text")]
    pub ws_ping_interval: Duration,
    /// Longest one WebSocket write may block (a client that stopped reading) before the connection
    /// is dropped.
    #[serde(with = "duration_text")]
    pub ws_write_timeout: Duration,
    /// WebSocket clients at once; one more is answered 503 before the upgrade.
    pub ws_max_clients: usize,
    /// Connections served at once (HTTP and HTTPS alike; upgraded WebSockets count against
    /// `ws_max_clients` instead); one more is answered 503 and closed.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers before its connection is closed
    /// (slow or idle clients must not hold connections), e.g. "10s".
    #[serde(with = "duration_text")]
    pub header_read_timeout: Duration,
    /// MaxMind GeoLite2-City/Country .mmdb file for `GET /api/v1/geo-attacks` (`--geoip-db`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geoip_db: Option<std::path::PathBuf>,
    /// `[api.events_rate_limit]`: `POST /api/v1/events` requests per second per token, with a
    /// burst (default 10/s, burst 20); over it the answer is 429 with `Retry-After`.
    pub events_rate_limit: ratelimit::EventsRateLimit,
    /// PEM certificate (chain) and private key: with both set the API is served over HTTPS only
    /// (see [`tls`]); with neither, over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<std::path::PathBuf>,
    /// How long a console login lasts, e.g. "12h".
    #[serde(with = "duration_text")]
    pub session_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            body_limit: 16 << 20,
            request_timeout: Duration::from_secs(30),
            tokens: Vec::new(),
            ws_queue: 1024,
            ws_ping_interval: Duration::from_secs(20),
            ws_write_timeout: Duration::from_secs(10),
            ws_max_clients: 2048,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            geoip_db: None,
            events_rate_limit: ratelimit::EventsRateLimit::default(),
            tls_cert: None,
            tls_key: None,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

impl ApiConfig {
    /// The TLS server settings when `tls_cert` and `tls_key` are set: both files are read and
    /// checked now, so a bad path or PEM stops the daemon before it attaches.
    pub fn tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, tls::TlsError> {
        tls::server_config(self.tls_cert.as_deref(), self.tls_key.as_deref())
    }

    /// What can be checked before the daemon attaches: every `[[api.tokens]]` entry (length,
    /// duplicates, an agent token's VM) and the events rate limit. The admin token from the
    /// environment or the state dir is checked later, by [`Tokens::load`].
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        Tokens::new(self.tokens.clone())?;
        for (field, v) in [
            ("api.max_connections", self.max_connections),
            ("api.ws_max_clients", self.ws_max_clients),
        ] {
            if v == 0 {
                return Err(ApiConfigError::Invalid {
                    field: field.into(),
                    problem: "must be at least 1".into(),
                });
            }
        }
        self.events_rate_limit
            .validate()
            .map_err(|(field, problem)| ApiConfigError::Invalid {
                field: format!("api.events_rate_limit.{field}"),
                problem,
            })
    }
}

/// Why `[api]` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ApiConfigError {
    #[error(transparent)]
    Tokens(#[from] auth::TokenError),
    #[error("{field} {problem}")]
    Invalid { field: String, problem: String },
}

/// Durations as humantime text ("30s", "2m") in the config file.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        let v = humantime::parse_duration(&s).map_err(|e| {
            D::Error::custom(format!("`{s}` is not a duration ({e}); use e.g. \"30s\""))
        })?;
        if v.is_zero() {
            return Err(D::Error::custom("must be longer than zero"));
        }
        Ok(v)
    }
}

/// What every handler sees.
#[derive(Clone)]
pub struct ApiState {
    pub control: Control,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<Tokens>,
    pub started: Instant,
    pub(crate) limits: Limits,
    pub(crate) hub: Arc<ws::Hub>,
    /// Host events and thresholds (`POST /events`, `/thresholds`); see [`ApiState::with_events`].
    pub events: crate::events::Events,
    /// The `--geoip-db` database ([`ApiState::with_geoip`]).
    pub(crate) geo: Option<Arc<crate::geo::GeoDb>>,
    /// Per-token budget of `POST /api/v1/events` (`[api.events_rate_limit]`).
    pub(crate) events_limit: Arc<ratelimit::Limiter>,
    /// `/health`'s last view of the datapath, for when its lock is busy.
    pub(crate) dp_health: Arc<health::DatapathCache>,
    /// Console sessions (cookies); see [`ApiState::with_console_sessions`].
    pub sessions: Arc<console::Sessions>,
}

#[derive(Clone, Debug)]
pub(crate) struct Limits {
    body_limit: usize,
    request_timeout: Duration,
    conns: conns::ConnLimits,
}

impl ApiState {
    /// Builds the state and starts the WebSocket fan-out task; call inside a tokio runtime.
    /// `events` is the daemon's host-event engine (shared with the auth-log fast path).
    pub fn new(
        control: Control,
        metrics: Arc<Metrics>,
        tokens: Arc<Tokens>,
        cfg: &ApiConfig,
        events: crate::events::Events,
    ) -> Self {
        let hub = ws::Hub::start(
            &control,
            ws::WsConfig {
                queue: cfg.ws_queue.max(1),
                ping_interval: cfg.ws_ping_interval,
                write_timeout: cfg.ws_write_timeout,
                max_clients: cfg.ws_max_clients.max(1),
            },
        );
        Self {
            events,
            control,
            metrics,
            tokens,
            started: Instant::now(),
            limits: Limits {
                body_limit: cfg.body_limit,
                request_timeout: cfg.request_timeout,
                conns: conns::ConnLimits {
                    max_connections: cfg.max_connections,
                    header_read_timeout: cfg.header_read_timeout,
                },
            },
            hub,
            geo: None,
            events_limit: Arc::new(ratelimit::Limiter::new(cfg.events_rate_limit.clone())),
            dp_health: Arc::default(),
            sessions: Arc::new(console::Sessions::new(cfg.session_ttl)),
        }
    }

    /// Keeps console sessions in `<state_dir>/console-sessions.json`, so an open page survives a
    /// daemon restart.
    pub fn with_console_sessions(self, state_dir: &std::path::Path) -> Self {
        self.sessions
            .persist_in(state_dir.join(console::session::SESSIONS_FILE));
        self
    }

    /// Connected WebSocket clients.
    pub fn ws_clients(&self) -> usize {
        self.hub.clients()
    }
}

fn api(path: &str) -> String {
    format!("{PREFIX}{path}")
}

/// Every route. Middleware, outermost first: request id (and its log span), request metrics, JSON error bodies, timeout, body limit.
pub fn router(state: ApiState) -> Router {
    let limits = state.limits.clone();
    Router::new()
        .route(&api("/health"), get(health::health))
        .route(
            &api("/blocklist"),
            get(lists::list_block)
                .post(lists::put_block)
                .delete(lists::remove_block),
        )
        .route(
            &api("/allowlist"),
            get(lists::list_allow)
                .post(lists::put_allow)
                .delete(lists::remove_allow),
        )
        .route(&api("/alerts"), get(alerts_flows::alerts))
        .route(&api("/flows"), get(alerts_flows::flows))
        .route(&api("/ws"), get(ws::ws))
        .route(&api("/block"), post(seed::block))
        .route(&api("/block/per-vm"), post(seed::block_per_vm))
        .route(&api("/block/{ip}"), delete(seed::unblock))
        .route(&api("/blocked-ips"), get(seed::blocked_ips))
        .route(&api("/never-block"), get(trust::never_block))
        .merge(multivm::routes())
        .merge(events::routes())
        .merge(console::routes())
        .route(&api("/openapi.json"), get(openapi::spec))
        .route("/openapi.json", get(openapi::spec_root))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The configured limit below replaces axum's 2 MB default.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(console::headers))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(middleware::from_fn(request_id::request_id))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes, then tells WebSocket clients that
/// the server is going away.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, None, state, shutdown).await
}

/// [`serve`], over HTTPS when `tls` is set (`[api] tls_cert`, `tls_key`; see [`ApiConfig::tls`]):
/// then the listener answers TLS only, never plain HTTP.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let hub = state.hub.clone();
    state.sessions.set_secure(tls.is_some());
    let limits = state.limits.conns;
    let app = router(state);
    let shutdown = async move {
        shutdown.await;
        hub.shutdown();
    };
    match tls {
        None => {
            // No Nagle: small JSON answers and push messages must not wait for a delayed ACK (40 ms).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            conns::serve(listener, app, limits, shutdown).await;
        }
        Some(config) => {
            // Nagle is off in the TLS listener, before the handshake.
            conns::serve(
                tls::TlsListener::new(listener, config)?,
                app,
                limits,
                shutdown,
            )
            .await;
        }
    }
    Ok(())
}

async fn not_found() -> ApiError {
    ApiError::not_found(format!(
        "no such route; the API is under {PREFIX} (see /openapi.json)"
    ))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route (see /openapi.json)",
    )
}

/// Records the request's duration under its route template.
async fn track(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let route = route.as_deref().unwrap_or(crate::metrics::UNMATCHED_ROUTE);
    state
        .metrics
        .observe_http_since(method.as_str(), route, resp.status().as_u16(), start);
    resp
}

/// Gives error responses that did not come from our handlers (timeouts, body limit, upgrade
/// failures) the API's JSON error shape.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let msg = match text.trim() {
        "" => reason,
        t => format!("{reason}: {t}"),
    };
    let mut out = ApiError::new(status, msg).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

/// A JSON response with a precomputed body (the OpenAPI document).
pub(crate) fn json_text(text: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(text))
        .expect("static response")
}

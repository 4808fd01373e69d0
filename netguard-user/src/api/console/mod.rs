//! The console: a web page at `/` on the API's own address (same origin as `/api/v1` and its
//! WebSocket), its embedded assets, and the browser's way in.
//!
//! - `POST /api/v1/session {"token"}` trades a token for a session cookie (HttpOnly, SameSite=Strict,
//!   Secure under TLS, Max-Age `[api] session_ttl`); `GET` says who is logged in; `DELETE` logs out.
//!   The token is only ever in that one request's body: never in a URL, storage or a log.
//! - With the cookie instead of a bearer token, every write (any method but GET/HEAD) needs an
//!   `Origin` equal to the API's own and the header `X-NetGuard-CSRF: 1`, which a cross-site form
//!   cannot send ([`session_principal`]). The WebSocket refuses a foreign `Origin` ([`origin_ok`]).
//! - Every response carries a Content-Security-Policy with no inline script and no other origin,
//!   `nosniff`, `no-referrer` and `frame-ancestors 'none'` ([`headers`]).

mod assets;
pub mod session;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    ApiState, api,
    auth::{self, Auth, Principal, Read, Role},
    error::{ApiError, ErrorBody},
};
use netguard_store::{Alert, AlertQuery};
pub use session::{SESSIONS_FILE, Sessions};

/// The custom header a cookie-authenticated write must carry.
pub const CSRF_HEADER: &str = "x-netguard-csrf";

/// The policy of every response: scripts, styles and connections from this origin only, no inline
/// script or style, no framing, no plugins.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(assets::index))
        .route("/console/{*file}", get(assets::file))
        .route(&api("/session"), get(whoami).post(login).delete(logout))
        .route("/api/threats", get(threats))
}

/// Adds the security headers to every response.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

/// The origin this request was addressed to (`http://` + `Host`, or `https://` under TLS).
fn own_origin(headers: &HeaderMap, secure: bool) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!(
        "{}://{}",
        if secure { "https" } else { "http" },
        host
    ))
}

/// True when the request has no `Origin` (not a browser) or one equal to the API's own.
pub fn origin_ok(headers: &HeaderMap, secure: bool) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(o) => o.to_str().ok() == own_origin(headers, secure).as_deref(),
    }
}

/// The CSRF defence of a cookie-authenticated write: this origin, and the custom header.
fn csrf_ok(headers: &HeaderMap, secure: bool) -> Result<(), ApiError> {
    if headers.get(header::ORIGIN).is_none() || !origin_ok(headers, secure) {
        return Err(ApiError::forbidden(
            "a write with the session cookie must come from the console's own origin (Origin header)",
        )
        .with_code("csrf"));
    }
    if headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Err(ApiError::forbidden(format!(
            "a write with the session cookie needs the header `{CSRF_HEADER}: 1`"
        ))
        .with_code("csrf"));
    }
    Ok(())
}

fn is_read(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD)
}

/// The holder of the request's session cookie, when it has one (and no bearer token). A cookie that
/// names no live session is a 401 that says to log in again; a write must pass [`csrf_ok`].
pub fn session_principal(parts: &Parts, state: &ApiState) -> Result<Option<Principal>, ApiError> {
    let Some(id) = session::cookie_value(&parts.headers) else {
        return Ok(None);
    };
    let Some((p, _)) = state.sessions.principal(id, &state.tokens) else {
        return Err(ApiError::unauthorized(
            "the console session has expired or was ended; log in again",
        )
        .with_code("session_expired"));
    };
    if !is_read(&parts.method) {
        csrf_ok(&parts.headers, state.sessions.secure())?;
    }
    Ok(Some(p))
}

/// `POST /api/v1/session`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// A viewer, operator or admin token.
    token: String,
}

/// Who holds this browser's session (`GET /api/v1/session`, and a login's answer).
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionView {
    logged_in: bool,
    /// Why not logged in.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// Writes take effect (operator or admin).
    can_write: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<DateTime<Utc>>,
    /// A GeoIP database is loaded (the Map view has data).
    geoip: bool,
}

fn view(state: &ApiState, p: Principal, expires_at: DateTime<Utc>) -> SessionView {
    SessionView {
        logged_in: true,
        reason: None,
        can_write: p.role.permits(auth::Need::Write),
        name: Some(p.name),
        role: Some(p.role),
        expires_at: Some(expires_at),
        geoip: state.geo.is_some(),
    }
}

/// The console's routes in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(whoami, login, logout, threats),
    components(schemas(Login, SessionView)),
    tags((name = "console", description = "The web console's session (cookie) and the live-pipeline alias"))
)]
pub struct ConsoleDoc;

/// Trades a token for a session cookie (HttpOnly, SameSite=Strict, Secure under TLS, Max-Age
/// `[api] session_ttl`). Needs `Origin` equal to this server's and `X-NetGuard-CSRF: 1`.
#[utoipa::path(
    post,
    path = "/api/v1/session",
    tag = "console",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in; the session cookie is in `Set-Cookie`", body = SessionView),
        (status = 400, description = "Not a JSON object with a token", body = ErrorBody),
        (status = 401, description = "Unknown token", body = ErrorBody),
        (status = 403, description = "No same-origin `Origin` or no `X-NetGuard-CSRF: 1` (`code` \"csrf\"), or an agent token", body = ErrorBody),
        (status = 429, description = "Too many failed logins lately (`code` \"login_throttled\"); retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
async fn login(State(state): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(wait) = state.sessions.login_allowed() {
        let secs = super::ratelimit::retry_after_secs(wait);
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed console logins lately; try again in {secs} s"),
        )
        .with_code("login_throttled")
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    match login_inner(&state, &headers, &body) {
        Ok((cookie, v)) => {
            let mut r = Json(v).into_response();
            if let Ok(c) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => e.into_response(),
    }
}

fn login_inner(
    state: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, SessionView), ApiError> {
    csrf_ok(headers, state.sessions.secure())?;
    let req: Login = super::error::parse_json(body)?;
    let Some(who) = state.tokens.authenticate(&req.token) else {
        state.sessions.login_failed();
        log::warn!("console login with an unknown token refused");
        return Err(ApiError::unauthorized(
            "that token is not valid; paste a token from the daemon's config or admin.token",
        )
        .with_field("token"));
    };
    if who.role == Role::Agent {
        return Err(ApiError::forbidden(format!(
            "token `{}` is an agent token, which can only post events; log in with a viewer, operator or admin token",
            who.name
        ))
        .with_field("token"));
    }
    let s = state.sessions.open(&who).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not open a session: {e}"),
        )
    })?;
    log::info!("console login: `{}` ({})", who.name, who.role);
    Ok((state.sessions.cookie(&s), view(state, who, s.expires_at)))
}

/// Who holds this browser's session cookie. Not being logged in is an answer (200, `logged_in:
/// false` with a reason), not an error, so that opening the page logs no failed request.
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "console",
    responses(
        (status = 200, description = "The session, or `logged_in: false` with a reason", body = SessionView),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
async fn whoami(State(state): State<ApiState>, headers: HeaderMap) -> Json<SessionView> {
    let reason = match session::cookie_value(&headers) {
        None => "not logged in",
        Some(id) => match state.sessions.principal(id, &state.tokens) {
            Some((p, exp)) => return Json(view(&state, p, exp)),
            None => "the console session has expired or was ended; log in again",
        },
    };
    Json(SessionView {
        logged_in: false,
        reason: Some(reason.into()),
        name: None,
        role: None,
        can_write: false,
        expires_at: None,
        geoip: state.geo.is_some(),
    })
}

/// Ends this browser's session and clears its cookie. Needs `Origin` equal to this server's and
/// `X-NetGuard-CSRF: 1`.
#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "console",
    responses(
        (status = 204, description = "Logged out (also when there was no session)"),
        (status = 403, description = "No same-origin `Origin` or no `X-NetGuard-CSRF: 1`", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    csrf_ok(&headers, state.sessions.secure())?;
    if let Some(id) = session::cookie_value(&headers) {
        state.sessions.close(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(c) = HeaderValue::from_str(&state.sessions.clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(r)
}

#[utoipa::path(
    get,
    path = "/api/threats",
    tag = "console",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The last 100 alerts, newest first", body = [Alert]),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
/// `GET /api/threats`: the last 100 alerts, newest first (the live-pipeline design's alias of
/// `GET /api/v1/alerts?limit=100`).
async fn threats(
    _: Auth<Read>,
    State(state): State<ApiState>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    Ok(Json(state.control.alerts(AlertQuery::default()).await?))
}

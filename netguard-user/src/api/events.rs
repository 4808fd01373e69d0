//! `POST /api/v1/events` (host events from agents, exactly once) and `GET/PUT /api/v1/thresholds`
//! (the failed-login thresholds, global and per VM), on top of [`crate::events::Events`].

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{FromRequestParts, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::Value;
use utoipa::OpenApi;

use super::{
    ApiState,
    auth::{Auth, Events as EventsAccess, Principal, Read, Role, Write},
    error::{ApiError, ApiJson, ErrorBody, store_error},
    events_body::{EventsBody, EventsJson},
    ratelimit::retry_after_secs,
};
use crate::{
    control::ControlError,
    events::{
        BlockOutcome, IngestReport, ItemResult, ItemStatus, Poster, Rule, RuleOverride,
        SetThresholdsError, Thresholds,
    },
};

/// The routes, merged into the API router.
pub fn routes() -> Router<ApiState> {
    let api = |p: &str| format!("{}{p}", super::PREFIX);
    Router::new()
        .route(&api("/events"), post(post_events))
        .route(&api("/thresholds"), get(get_thresholds).put(put_thresholds))
}

/// This module's part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(post_events, get_thresholds, put_thresholds),
    components(schemas(EventIn, EventsBodyDoc, IngestReport, ItemResult, ItemStatus, BlockOutcome, Thresholds, Rule, RuleOverride)),
    tags((name = "events", description = "Host events (failed and successful logins) from agents and \
        the sensor's sshd log, counted exactly once; failed-login thresholds that block globally or per VM"))
)]
pub struct EventsDoc;

/// One host event as agents post it; unknown keys are ignored.
///
/// No key is required by the JSON shape: an item that lacks `src_ip`, `ts` or `event_type` (or
/// whose values do not parse) is rejected on its own, with the field and the reason, while the
/// other items are kept. A text field holding a JSON value of another type (a number as `src_ip`)
/// makes the whole request malformed (422, field named).
#[allow(dead_code)]
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct EventIn {
    /// The VM (sensor or agent host) that saw the login. Default: the agent token's `vm_id`; an
    /// agent token may name no other VM (403).
    #[schema(example = "win-web-07")]
    source_vm_id: Option<String>,
    /// Needed. When it happened: RFC 3339 text, or epoch seconds or milliseconds (a number or a
    /// string of digits).
    #[schema(value_type = Value, required = false, example = "2024-05-01T12:00:00.123Z")]
    ts: Option<String>,
    /// Needed. The address the login came from (IPv4 or IPv6; IPv4-mapped IPv6 is read as IPv4).
    #[schema(example = "203.0.113.7")]
    src_ip: Option<String>,
    #[schema(example = "Administrator")]
    username: Option<String>,
    /// 0-65535, as a number or a string of digits.
    #[schema(value_type = Value, required = false, example = 51000)]
    src_port: Option<u16>,
    /// Needed. `windows_4625` (alias `4625`), `windows_4624`, `ssh_failed`, `ssh_invalid_user`,
    /// `ssh_accepted`, `rdp_failed`, `login_failed`, `login_success`; case-insensitive.
    #[schema(example = "windows_4625")]
    event_type: Option<String>,
    /// The original log text (checked, not stored).
    raw: Option<String>,
}

/// The body of `POST /api/v1/events`: one event, or an array of them.
#[allow(dead_code)]
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(as = EventsBody)]
pub enum EventsBodyDoc {
    One(EventIn),
    Many(Vec<EventIn>),
}

/// Whoever posts events: authenticated with a role that may post (401/403 as on every route), then
/// within its token's budget (`[api.events_rate_limit]`, 429 with `Retry-After`), both before the
/// body is read. Keyed by the token's name, not the client address: agents behind one NAT do not
/// share a budget, and one token cannot escape its own by changing address.
pub struct EventPoster(pub Principal);

impl FromRequestParts<ApiState> for EventPoster {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let who = Auth::<EventsAccess>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?
            .0;
        if let Err(wait) = state.events_limit.check(&who.name, Instant::now()) {
            let secs = retry_after_secs(wait);
            let cfg = state.events_limit.config();
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "token `{}` is over its limit of {} event posts per second (burst {}); retry \
                     after {secs} s, and send more events per request (an array) instead of one per request",
                    who.name, cfg.per_second, cfg.burst
                ),
            )
            .with_code("rate_limited")
            .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return Err(resp);
        }
        Ok(EventPoster(who))
    }
}

/// An agent token speaks for its own VM only: a request with any item naming another VM is refused
/// as a whole (403), since it is the token, not the item, that is wrong.
fn check_own_vm(items: &[Value], single: bool, who: &Principal) -> Result<(), ApiError> {
    let (Role::Agent, Some(bound)) = (who.role, who.vm_id.as_deref()) else {
        return Ok(());
    };
    for (i, item) in items.iter().enumerate() {
        let Some(vm) = item
            .get("source_vm_id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        if vm != bound {
            let field = if single {
                "source_vm_id".to_owned()
            } else {
                format!("items[{i}].source_vm_id")
            };
            return Err(ApiError::forbidden(format!(
                "agent token `{}` is bound to VM `{bound}` and may not post events for `{vm}`; \
                 nothing in this request was kept",
                who.name
            ))
            .with_field(field));
        }
    }
    Ok(())
}

/// Keys whose value must be text (or null) when present.
const TEXT_KEYS: [&str; 5] = ["source_vm_id", "src_ip", "username", "event_type", "raw"];

/// The JSON shape the document promises: every item an object, text keys text or null. Anything
/// else is a malformed request (422) rather than a rejected item.
fn check_shape(items: &[Value], single: bool) -> Result<(), ApiError> {
    for (i, item) in items.iter().enumerate() {
        let at = |k: &str| {
            if single {
                k.to_owned()
            } else if k.is_empty() {
                format!("items[{i}]")
            } else {
                format!("items[{i}].{k}")
            }
        };
        let Value::Object(obj) = item else {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "invalid request body: item {i} is {}, not an event object",
                    kind(item)
                ),
            )
            .with_field(at("")));
        };
        for key in TEXT_KEYS {
            if let Some(v) = obj.get(key)
                && !(v.is_string() || v.is_null())
            {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("invalid request body: `{key}` is {}, not text", kind(v)),
                )
                .with_field(at(key)));
            }
        }
    }
    Ok(())
}

/// Post host events (one object or an array).
///
/// Each item is checked on its own: bad items are rejected with their field and reason while the
/// good ones are kept. An event whose fingerprint (SHA-256 over its time, IP, username and port) was
/// seen within the retention window (`[events] retention`, default 24 h) is acknowledged as a
/// duplicate and not counted again, so a retried batch is safe. New failures count towards the
/// thresholds at once; `decisions` lists the blocks they caused. 200 when no item was rejected, 207
/// when some were. Agent tokens may post here and nowhere else, and only for their own VM (`vm_id`):
/// a request with an item for another VM is refused whole (403). Failures from one VM block on that
/// VM only; a global block needs failures from two VMs or from the sensor's own sshd log. Each
/// token may post `[api.events_rate_limit]` requests per second (default 10, burst 20); past that
/// the answer is 429 with `Retry-After`.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    request_body(content = EventsBodyDoc, description = "One event object, or an array of them (at most `[events] max_batch`, default 10,000)"),
    responses(
        (status = 200, description = "Every item accepted or duplicate", body = IngestReport),
        (status = 207, description = "Some (or all) items rejected; the others were kept", body = IngestReport),
        (status = 400, description = "Malformed JSON, or neither an object nor an array", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "The token's role may not post events, or an agent token posted an event for another VM (field named); nothing was kept", body = ErrorBody),
        (status = 413, description = "More items than `[events] max_batch`, or a body over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "An item is not an object, or a text field holds another JSON type (field named)", body = ErrorBody),
        (status = 429, description = "This token is over `[api.events_rate_limit]`; nothing was read or kept: retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before posting again"))),
        (status = 503, description = "The store cannot answer; nothing was counted: retry the batch", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn post_events(
    EventPoster(who): EventPoster,
    State(state): State<ApiState>,
    EventsJson(body): EventsJson,
) -> Result<Response, ApiError> {
    // The batch limit (413) was applied while parsing, before the items were allocated.
    let (items, single) = match body {
        EventsBody::Many(items) => (items, false),
        EventsBody::One(obj) => (vec![obj], true),
        EventsBody::Other(kind) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body is {kind}, not an event object or an array of them"),
            ));
        }
    };
    check_shape(&items, single)?;
    check_own_vm(&items, single, &who)?;
    let poster = match who.role {
        Role::Agent => Poster {
            default_vm: who.vm_id.clone(),
            bound_vm: who.vm_id.clone(),
        },
        _ => Poster::default(),
    };
    let report = state
        .events
        .ingest(&items, &poster)
        .await
        .map_err(store_error)?;
    let status = if report.rejected == 0 {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((status, Json(report)).into_response())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The failed-login thresholds in force.
///
/// `global`: failures from one IP across every VM within `find_time` block it everywhere for
/// `ban_time`. `per_vm`: failures from one IP against one VM block it on that VM only (scope = the
/// VM id). `vms`: per-VM overrides of `per_vm` (only the keys given). The block is made on exactly
/// the `max_retry`-th failure.
#[utoipa::path(
    get,
    path = "/api/v1/thresholds",
    tag = "events",
    responses(
        (status = 200, description = "The thresholds", body = Thresholds),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "The token's role may not read", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_thresholds(_auth: Auth<Read>, State(state): State<ApiState>) -> Json<Thresholds> {
    Json(state.events.thresholds())
}

/// Replace the failed-login thresholds (all of them: send what GET returns, changed).
///
/// Takes effect for the next event. Every invalid field is listed (`items`), and nothing changes
/// unless all are valid. Durations are text such as "90s", "10m", "1h".
#[utoipa::path(
    put,
    path = "/api/v1/thresholds",
    tag = "events",
    request_body = Thresholds,
    responses(
        (status = 200, description = "The new thresholds, in force", body = Thresholds),
        (status = 400, description = "Invalid values, each named by its field", body = ErrorBody),
        (status = 401, description = "Missing or unknown token", body = ErrorBody),
        (status = 403, description = "The token's role may not change settings", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong shape (missing or unknown field, wrong type), field named", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_thresholds(
    _auth: Auth<Write>,
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<Thresholds>,
) -> Result<Json<Thresholds>, ApiError> {
    state
        .events
        .set_thresholds(body)
        .map(Json)
        .map_err(|e| match e {
            SetThresholdsError::Invalid(errors) => ControlError::Invalid(errors).into(),
            SetThresholdsError::Save(why) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the thresholds were not changed: {why}"),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_the_routes_and_no_required_item_keys() {
        let doc: Value = serde_json::from_str(super::super::openapi::document()).unwrap();
        for (path, method) in [
            ("/api/v1/events", "post"),
            ("/api/v1/thresholds", "get"),
            ("/api/v1/thresholds", "put"),
        ] {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing"
            );
        }
        let item = &doc["components"]["schemas"]["EventIn"];
        assert!(item["properties"]["src_ip"].is_object(), "{item}");
        assert!(
            item.get("required")
                .is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)),
            "no key is required by shape: {item}"
        );
        let body = &doc["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(body["$ref"], "#/components/schemas/EventsBody", "{body}");
        assert!(doc["components"]["schemas"]["EventsBody"]["oneOf"].is_array());
    }

    #[test]
    fn an_agent_may_post_for_its_own_vm_only() {
        let agent = Principal {
            name: "win-7-agent".into(),
            role: Role::Agent,
            vm_id: Some("win-7".into()),
        };
        let own = serde_json::json!({"source_vm_id": " win-7 ", "src_ip": "10.0.0.1"});
        let untagged = serde_json::json!({"src_ip": "10.0.0.1"});
        let other = serde_json::json!({"source_vm_id": "win-8"});
        assert!(check_own_vm(&[own.clone(), untagged.clone()], false, &agent).is_ok());
        let e = check_own_vm(&[own.clone(), other.clone(), untagged], false, &agent).unwrap_err();
        assert_eq!(
            (e.status, e.body.field.as_deref()),
            (StatusCode::FORBIDDEN, Some("items[1].source_vm_id"))
        );
        assert!(
            e.body.error.contains("bound to VM `win-7`"),
            "{}",
            e.body.error
        );
        let e = check_own_vm(std::slice::from_ref(&other), true, &agent).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("source_vm_id"));
        // Operators and admins name any VM.
        let op = Principal {
            role: Role::Operator,
            vm_id: None,
            ..agent
        };
        assert!(check_own_vm(&[other], false, &op).is_ok());
    }

    #[test]
    fn the_document_has_a_429_with_retry_after() {
        let doc: Value = serde_json::from_str(super::super::openapi::document()).unwrap();
        let r = &doc["paths"]["/api/v1/events"]["post"]["responses"]["429"];
        assert!(r["headers"]["Retry-After"]["schema"].is_object(), "{r}");
        assert!(
            r["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .is_some_and(|s| s.ends_with("ErrorBody")),
            "{r}"
        );
    }

    #[test]
    fn shape_errors_name_the_item_and_key() {
        let items = vec![
            serde_json::json!({"src_ip": "10.0.0.1"}),
            serde_json::json!({"event_type": 4625}),
        ];
        let e = check_shape(&items, false).unwrap_err();
        assert_eq!(
            (e.status, e.body.field.as_deref()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("items[1].event_type")
            )
        );
        assert!(
            check_shape(
                &[serde_json::json!({"ts": 5, "src_port": "22", "username": null})],
                true
            )
            .is_ok()
        );
        let e = check_shape(&[serde_json::json!(["x"])], true).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

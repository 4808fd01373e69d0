//! `GET/POST/DELETE /api/v1/blocklist` and `/api/v1/allowlist`: one code path for both lists, all of it
//! through [`Control`](crate::control::Control).

use std::{fmt, marker::PhantomData};

use axum::{
    Json,
    extract::State,
    http::HeaderValue,
    response::{IntoResponse, Response},
};
use netguard_store::{EntrySource, ListEntry, ListKind};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{
        MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer, value::SeqAccessDeserializer,
    },
};

use super::{
    ApiState,
    auth::{Auth, Read, Write},
    error::{ApiError, ApiJson, ApiQuery, ErrorBody},
};
use crate::control::{EntryRequest, EntryView};

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 100_000;
/// Far past any list; bounded so the documented range is exactly what is accepted.
pub const MAX_OFFSET: usize = 1_000_000_000;
/// A put answer lists at most this many entries; `applied` has the full count.
pub const MAX_ECHOED: usize = 1000;
pub const TOTAL_COUNT: &str = "x-total-count";

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Entries per page (default 1000).
    #[param(minimum = 0, maximum = 100000)]
    pub limit: Option<usize>,
    /// Entries to skip (entries are sorted by CIDR).
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<usize>,
}

impl ListQuery {
    /// (offset, limit), validated.
    pub fn page(&self) -> Result<(usize, usize), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit > MAX_LIMIT {
            return Err(ApiError::field(
                "limit",
                format!("{limit} is over the maximum of {MAX_LIMIT}; page with offset"),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset > MAX_OFFSET {
            return Err(ApiError::field(
                "offset",
                format!("{offset} is over the maximum of {MAX_OFFSET}"),
            ));
        }
        Ok((offset, limit))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// The CIDR or address to remove.
    #[param(example = "203.0.113.0/24")]
    pub cidr: String,
    /// Remove only the entry of this scope ("global" or a sensor id); default: every scope.
    pub scope: Option<String>,
}

/// A request body: one entry, or an array of entries (bulk, all or nothing).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EntryBody {
    One(EntryRequest),
    Many(Vec<EntryRequest>),
}

impl EntryBody {
    pub fn into_vec(self) -> Vec<EntryRequest> {
        match self {
            EntryBody::One(r) => vec![r],
            EntryBody::Many(v) => v,
        }
    }
}

// Not `#[serde(untagged)]` for reading: untagged deserialisation buffers the whole body and its error
// is only "did not match any variant"; dispatching on the first token keeps per-field errors
// ("items[3].ttl: invalid type") and costs nothing on a 100,000-entry import.
impl<'de> Deserialize<'de> for EntryBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V(PhantomData<EntryBody>);
        impl<'de> Visitor<'de> for V {
            type Value = EntryBody;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an entry object {\"cidr\": ...} or an array of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EntryBody, A::Error> {
                EntryRequest::deserialize(MapAccessDeserializer::new(map)).map(EntryBody::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<EntryBody, A::Error> {
                Vec::<EntryRequest>::deserialize(SeqAccessDeserializer::new(seq))
                    .map(EntryBody::Many)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Answer of a successful POST.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PutResponse {
    /// Entries added or replaced (duplicates in the request count once).
    pub applied: usize,
    /// Entries that did not exist before.
    pub created: usize,
    /// The stored entries, at most 1000 (see `truncated`).
    pub entries: Vec<ListEntry>,
    /// True when `entries` lists only the first 1000.
    pub truncated: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    /// How many entries existed (0: nothing to remove, which is not an error).
    pub removed: usize,
}

async fn list(state: &ApiState, kind: ListKind, q: &ListQuery) -> Result<Response, ApiError> {
    let (offset, limit) = q.page()?;
    let (total, views) = state.control.list(kind, offset, limit).await?;
    let mut resp = Json(views).into_response();
    resp.headers_mut()
        .insert(TOTAL_COUNT, HeaderValue::from(total));
    Ok(resp)
}

/// Applies a body through Control, as `source`.
pub async fn put(
    state: &ApiState,
    kind: ListKind,
    reqs: &[EntryRequest],
    source: EntrySource,
) -> Result<PutResponse, ApiError> {
    if reqs.is_empty() {
        // An empty import is valid and changes nothing; it must not announce an empty change.
        return Ok(PutResponse {
            applied: 0,
            created: 0,
            entries: Vec::new(),
            truncated: false,
        });
    }
    let mut out = state.control.put(kind, reqs, source).await?;
    // An audit line; in JSON logs it carries the request's id (see `request_id`).
    log::info!(
        "{}list: {} entr{} applied ({} new) through the API",
        kind.as_str(),
        out.applied,
        if out.applied == 1 { "y" } else { "ies" },
        out.created
    );
    let truncated = out.entries.len() > MAX_ECHOED;
    out.entries.truncate(MAX_ECHOED);
    Ok(PutResponse {
        applied: out.applied,
        created: out.created,
        entries: out.entries,
        truncated,
    })
}

async fn remove(
    state: &ApiState,
    kind: ListKind,
    q: &RemoveQuery,
) -> Result<Json<Removed>, ApiError> {
    let removed = state
        .control
        .remove(kind, &q.cidr, q.scope.as_deref().filter(|s| !s.is_empty()))
        .await?;
    Ok(Json(Removed { removed }))
}

/// The three handlers of one list, with their OpenAPI descriptions.
macro_rules! list_routes {
    ($kind:expr, $path:literal, $tag:literal, $list:ident, $put:ident, $remove:ident, $what:literal) => {
        #[doc = concat!("List ", $what, " entries (all scopes), sorted by CIDR, with this sensor's kernel hit counts.")]
        #[utoipa::path(
            get,
            path = $path,
            tag = $tag,
            params(ListQuery),
            security(("bearer" = [])),
            responses(
                (status = 200, description = "One page of entries", body = [EntryView],
                    headers(("x-total-count" = usize, description = "Entries in the list before paging"))),
                (status = 400, description = "Invalid parameter", body = ErrorBody),
                (status = 401, description = "Missing or invalid token", body = ErrorBody),
                (status = 403, description = "Role too low", body = ErrorBody),
                (status = "default", description = "Error", body = ErrorBody),
            )
        )]
        pub async fn $list(_: Auth<Read>, State(state): State<ApiState>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Response, ApiError> {
            list(&state, $kind, &q).await
        }

        #[doc = concat!("Add or replace ", $what, " entries: one object, or an array (bulk, all or nothing: one invalid item applies nothing and every failing item is listed).")]
        #[utoipa::path(
            post,
            path = $path,
            tag = $tag,
            request_body = EntryBody,
            security(("bearer" = [])),
            responses(
                (status = 200, description = "Applied to the kernel and stored", body = PutResponse),
                (status = 400, description = "Invalid item(s); nothing applied. `items` lists every failure", body = ErrorBody),
                (status = 401, description = "Missing or invalid token", body = ErrorBody),
                (status = 403, description = "Role too low", body = ErrorBody),
                (status = 413, description = "Body or bulk over the limit", body = ErrorBody),
                (status = 415, description = "Not JSON", body = ErrorBody),
                (status = 422, description = "JSON of the wrong shape (unknown field, wrong type)", body = ErrorBody),
                (status = 507, description = "Kernel table full; raise its size in the config", body = ErrorBody),
                (status = "default", description = "Error", body = ErrorBody),
            )
        )]
        pub async fn $put(_: Auth<Write>, State(state): State<ApiState>, ApiJson(body): ApiJson<EntryBody>) -> Result<Json<PutResponse>, ApiError> {
            put(&state, $kind, &body.into_vec(), EntrySource::Manual).await.map(Json)
        }

        #[doc = concat!("Remove a ", $what, " entry. Idempotent: removing an absent entry answers `removed: 0`.")]
        #[utoipa::path(
            delete,
            path = $path,
            tag = $tag,
            params(RemoveQuery),
            security(("bearer" = [])),
            responses(
                (status = 200, description = "Removed (or was absent)", body = Removed),
                (status = 400, description = "Invalid cidr or scope", body = ErrorBody),
                (status = 401, description = "Missing or invalid token", body = ErrorBody),
                (status = 403, description = "Role too low", body = ErrorBody),
                (status = "default", description = "Error", body = ErrorBody),
            )
        )]
        pub async fn $remove(_: Auth<Write>, State(state): State<ApiState>, ApiQuery(q): ApiQuery<RemoveQuery>) -> Result<Json<Removed>, ApiError> {
            remove(&state, $kind, &q).await
        }
    };
}

list_routes!(
    ListKind::Block,
    "/api/v1/blocklist",
    "blocklist",
    list_block,
    put_block,
    remove_block,
    "blocklist"
);
list_routes!(
    ListKind::Allow,
    "/api/v1/allowlist",
    "allowlist",
    list_allow,
    put_allow,
    remove_allow,
    "allowlist"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::parse_json;

    #[test]
    fn one_or_many() {
        let one: EntryBody = parse_json(br#"{"cidr": "10.0.0.0/8", "ttl": "4h"}"#).unwrap();
        assert!(matches!(&one, EntryBody::One(r) if r.ttl.as_deref() == Some("4h")));
        let many: EntryBody = parse_json(br#"[{"cidr": "10.0.0.0/8"}, {"cidr": "::1"}]"#).unwrap();
        assert_eq!(many.into_vec().len(), 2);
        let e =
            parse_json::<EntryBody>(br#"[{"cidr": "10.0.0.0/8"}, {"cidr": "::1", "tll": "1h"}]"#)
                .unwrap_err();
        assert_eq!(e.status, 422);
        assert_eq!(
            e.body.field.as_deref(),
            Some("items[1].tll"),
            "{:?}",
            e.body
        );
        let e = parse_json::<EntryBody>(br#""10.0.0.0/8""#).unwrap_err();
        assert_eq!(e.status, 422);
    }

    #[test]
    fn paging_limits() {
        assert_eq!(ListQuery::default().page().unwrap(), (0, DEFAULT_LIMIT));
        let q = ListQuery {
            limit: Some(MAX_LIMIT + 1),
            offset: None,
        };
        assert_eq!(q.page().unwrap_err().body.field.as_deref(), Some("limit"));
    }
}

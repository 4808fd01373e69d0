//! Seed-compatible aliases (DESIGN.md): `POST /block`, `DELETE /block/{ip}`, `POST /block/per-vm`,
//! `GET /blocked-ips`, for scripts written against the seed API. They are thin translations into
//! [`Control`](crate::control::Control) calls with source "manual": the same validation, the same
//! kernel-then-store order, the same push events. Errors name the seed field (`ip`, `vm_id`,
//! `duration_seconds`).

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use netguard_store::{EntrySource, ListEntry, ListKind};
use serde::{Deserialize, Serialize};

use super::{
    ApiState,
    auth::{Auth, Read, Write},
    error::{ApiError, ApiJson, ApiQuery, ErrorBody},
    lists::{ListQuery, put},
    responses::BodyErrors,
};
use crate::control::{EntryRequest, EntryView};

/// A TTL as seconds or as text ("90s", "4h").
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SeedTtl {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedBlock {
    /// Address or CIDR.
    #[schema(example = "203.0.113.7")]
    pub ip: String,
    /// Lifetime in seconds; absent (and no `ttl`) means permanent.
    #[serde(default)]
    pub duration_seconds: Option<u64>,
    /// Lifetime as seconds or text ("4h"); an alternative to `duration_seconds`.
    #[serde(default)]
    pub ttl: Option<SeedTtl>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedBlockPerVm {
    #[schema(example = "203.0.113.7")]
    pub ip: String,
    /// The sensor (VM) the block applies to.
    #[schema(example = "vm-7")]
    pub vm_id: String,
    #[serde(default)]
    pub ttl: Option<SeedTtl>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeedBlocked {
    /// "blocked".
    pub status: String,
    /// The entry's CIDR.
    pub ip: String,
    pub entry: ListEntry,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeedUnblocked {
    /// "unblocked", or "not_blocked" when there was nothing to remove.
    pub status: String,
    pub ip: String,
    pub removed: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeedBlockedIps {
    /// Entries in the blocklist (before paging).
    pub count: usize,
    pub blocked_ips: Vec<EntryView>,
}

/// The TTL text of a seed body, naming the field it came from for errors.
fn ttl_text(
    duration_seconds: Option<u64>,
    ttl: Option<&SeedTtl>,
) -> Result<(Option<String>, &'static str), ApiError> {
    match (duration_seconds, ttl) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "ttl",
            "give duration_seconds or ttl, not both",
        )),
        (Some(s), None) => Ok((Some(format!("{s}s")), "duration_seconds")),
        (None, Some(SeedTtl::Seconds(s))) => Ok((Some(format!("{s}s")), "ttl")),
        (None, Some(SeedTtl::Text(t))) => Ok((Some(t.clone()), "ttl")),
        (None, None) => Ok((None, "ttl")),
    }
}

async fn block_one(
    state: &ApiState,
    req: EntryRequest,
    ttl_field: &'static str,
) -> Result<Json<SeedBlocked>, ApiError> {
    let out = put(
        state,
        ListKind::Block,
        std::slice::from_ref(&req),
        EntrySource::Manual,
    )
    .await
    .map_err(|e| e.rename_fields(&[("cidr", "ip"), ("scope", "vm_id"), ("ttl", ttl_field)]))?;
    let entry = out.entries.into_iter().next().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the control plane applied no entry",
        )
    })?;
    Ok(Json(SeedBlocked {
        status: "blocked".into(),
        ip: entry.cidr.to_string(),
        entry,
    }))
}

/// Seed alias: block an address on every sensor (scope global).
#[utoipa::path(
    post,
    path = "/api/v1/block",
    tag = "seed",
    request_body = SeedBlock,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Blocked", body = SeedBlocked),
        BodyErrors,
    )
)]
pub async fn block(
    _: Auth<Write>,
    State(state): State<ApiState>,
    ApiJson(b): ApiJson<SeedBlock>,
) -> Result<Json<SeedBlocked>, ApiError> {
    let (ttl, ttl_field) = ttl_text(b.duration_seconds, b.ttl.as_ref())?;
    let req = EntryRequest {
        cidr: b.ip,
        ttl,
        reason: b.reason,
        scope: None,
        force: false,
    };
    block_one(&state, req, ttl_field).await
}

/// Seed alias: block an address on one sensor (VM) only.
#[utoipa::path(
    post,
    path = "/api/v1/block/per-vm",
    tag = "seed",
    request_body = SeedBlockPerVm,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Blocked on that sensor", body = SeedBlocked),
        BodyErrors,
    )
)]
pub async fn block_per_vm(
    _: Auth<Write>,
    State(state): State<ApiState>,
    ApiJson(b): ApiJson<SeedBlockPerVm>,
) -> Result<Json<SeedBlocked>, ApiError> {
    if b.vm_id.trim().is_empty() {
        return Err(ApiError::field(
            "vm_id",
            "is empty: give the sensor id the block applies to",
        ));
    }
    // As a scope "global" means every sensor; as a VM id it would silently widen the block.
    if b.vm_id.trim() == netguard_store::Scope::GLOBAL {
        return Err(ApiError::field(
            "vm_id",
            "\"global\" is not a VM id; use POST /api/v1/block to block on every sensor",
        ));
    }
    let (ttl, ttl_field) = ttl_text(None, b.ttl.as_ref())?;
    let req = EntryRequest {
        cidr: b.ip,
        ttl,
        reason: b.reason,
        scope: Some(b.vm_id),
        force: false,
    };
    block_one(&state, req, ttl_field).await
}

/// Seed alias: unblock an address (every scope). Idempotent. A CIDR's slash is sent as `%2F`.
#[utoipa::path(
    delete,
    path = "/api/v1/block/{ip}",
    tag = "seed",
    params(("ip" = String, Path, description = "Address or CIDR (slash as %2F)", example = "203.0.113.7")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Unblocked (or was not blocked)", body = SeedUnblocked),
        (status = 400, description = "Invalid address", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
pub async fn unblock(
    _: Auth<Write>,
    State(state): State<ApiState>,
    ip: Result<Path<String>, PathRejection>,
) -> Result<Json<SeedUnblocked>, ApiError> {
    let Path(ip) = ip.map_err(|r| ApiError::field("ip", r.body_text()))?;
    let removed = state
        .control
        .remove(ListKind::Block, &ip, None)
        .await
        .map_err(|e| ApiError::from(e).rename_fields(&[("cidr", "ip")]))?;
    Ok(Json(SeedUnblocked {
        status: if removed > 0 {
            "unblocked"
        } else {
            "not_blocked"
        }
        .into(),
        ip,
        removed,
    }))
}

/// Seed alias: the blocklist (all scopes).
#[utoipa::path(
    get,
    path = "/api/v1/blocked-ips",
    tag = "seed",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Blocklist entries", body = SeedBlockedIps),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = "default", description = "Error", body = ErrorBody),
    )
)]
pub async fn blocked_ips(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<SeedBlockedIps>, ApiError> {
    let (offset, limit) = q.page()?;
    let (count, blocked_ips) = state.control.list(ListKind::Block, offset, limit).await?;
    Ok(Json(SeedBlockedIps { count, blocked_ips }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_sources() {
        assert_eq!(
            ttl_text(Some(90), None).unwrap(),
            (Some("90s".into()), "duration_seconds")
        );
        assert_eq!(
            ttl_text(None, Some(&SeedTtl::Text("4h".into()))).unwrap(),
            (Some("4h".into()), "ttl")
        );
        assert_eq!(
            ttl_text(None, Some(&SeedTtl::Seconds(5)))
                .unwrap()
                .0
                .as_deref(),
            Some("5s")
        );
        assert_eq!(
            ttl_text(Some(1), Some(&SeedTtl::Seconds(5)))
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("ttl")
        );
    }
}

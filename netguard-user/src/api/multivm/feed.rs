//! `GET /feed` (host events, alerts and block decisions merged, newest first) and
//! `GET /vms/{vm_id}/attacks` (one VM's failed logins and alerts, same item shape).
//!
//! Block decisions are the blocklist entries alive now, at their `created_at`: the store keeps no
//! history of removed or expired entries (those are pushed live on `/api/v1/ws` as "unblock").

use std::collections::BTreeSet;

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use chrono::{DateTime, Utc};
use netguard_store::{Alert, ListEntry, Scope, types::HostEventRecord};
use serde::{Deserialize, Serialize};

use super::{check_vm_id, load_alerts, load_blocks, load_events, page, parse_since, vm_filter};
use crate::api::{
    ApiState,
    auth::{Auth, Read},
    error::{ApiError, ApiQuery, store_error},
    responses::{NotFoundError, ParamErrors},
};

/// What a feed item is.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FeedType {
    /// A host event: a failed or successful login (`event` holds it).
    Event,
    /// An alert (`alert` holds it).
    Alert,
    /// A live blocklist entry, at its creation (`block` holds it).
    Block,
}

impl FeedType {
    const ALL: [FeedType; 3] = [FeedType::Event, FeedType::Alert, FeedType::Block];

    fn name(self) -> &'static str {
        match self {
            FeedType::Event => "event",
            FeedType::Alert => "alert",
            FeedType::Block => "block",
        }
    }
}

/// One feed item: common fields, plus exactly one of `event`, `alert`, `block` (the one `type`
/// names).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedItem {
    #[serde(rename = "type")]
    pub kind: FeedType,
    /// The event's own time, the alert's time, or the block's creation.
    pub ts: DateTime<Utc>,
    /// The VM concerned: the event's `source_vm_id`, the alert's `sensor_id`, the block's scope (null
    /// for a global block).
    #[schema(example = "vm-1")]
    pub vm_id: Option<String>,
    /// The source address, or the blocked CIDR.
    #[schema(example = "203.0.113.7")]
    pub src: String,
    /// One line for people, e.g. "failed ssh login for root from 203.0.113.7 on vm-1".
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<HostEventRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<ListEntry>,
}

impl FeedItem {
    fn from_event(e: HostEventRecord) -> Self {
        let who = e
            .username
            .as_deref()
            .map(|u| format!(" for {u}"))
            .unwrap_or_default();
        let what = if e.failure { "failed" } else { "successful" };
        FeedItem {
            kind: FeedType::Event,
            ts: e.ts,
            vm_id: Some(e.source_vm_id.clone()),
            src: e.src_ip.to_string(),
            summary: format!(
                "{what} {} login{who} from {} on {} ({})",
                e.service, e.src_ip, e.source_vm_id, e.event_type
            ),
            event: Some(e),
            alert: None,
            block: None,
        }
    }

    fn from_alert(a: Alert) -> Self {
        let repeats = if a.count > 1 {
            format!(", {} times", a.count)
        } else {
            String::new()
        };
        FeedItem {
            kind: FeedType::Alert,
            ts: a.ts,
            vm_id: Some(a.sensor_id.clone()),
            src: a.src_ip.to_string(),
            summary: format!(
                "{} from {} on {} (risk {}, {}{repeats})",
                a.class, a.src_ip, a.sensor_id, a.risk, a.action
            ),
            event: None,
            alert: Some(a),
            block: None,
        }
    }

    fn from_block(b: ListEntry) -> Self {
        let vm_id = match &b.scope {
            Scope::Global => None,
            Scope::Sensor(id) => Some(id.clone()),
        };
        let until = b
            .expires_at
            .map_or_else(|| "permanently".to_owned(), |t| format!("until {t}"));
        let source = serde_json::to_value(b.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let reason = b
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        FeedItem {
            kind: FeedType::Block,
            ts: b.created_at,
            vm_id,
            src: b.cidr.to_string(),
            summary: format!(
                "blocked {} (scope {}, {source}) {until}{reason}",
                b.cidr, b.scope
            ),
            event: None,
            alert: None,
            block: Some(b),
        }
    }

    /// A key that orders items of equal time deterministically.
    fn tie_key(&self) -> String {
        match (&self.event, &self.alert, &self.block) {
            (Some(e), _, _) => e.fingerprint.clone(),
            (_, Some(a), _) => a.id.clone(),
            (_, _, Some(b)) => b.id(),
            _ => String::new(),
        }
    }
}

/// A page of feed items.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Feed {
    pub since: DateTime<Utc>,
    /// Items matching the filters (before paging).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Newest first (by `ts`; equal times by type, then id).
    pub items: Vec<FeedItem>,
}

/// Newest first; the order is total, so pages never overlap or skip.
fn sort_newest_first(items: &mut [FeedItem]) {
    items.sort_by_cached_key(|i| (std::cmp::Reverse(i.ts), i.kind, i.tie_key()));
}

fn paged(mut items: Vec<FeedItem>, since: DateTime<Utc>, offset: usize, limit: usize) -> Feed {
    sort_newest_first(&mut items);
    let total = items.len();
    let items = items.into_iter().skip(offset).take(limit).collect();
    Feed {
        since,
        total,
        offset,
        limit,
        items,
    }
}

/// `?type=`: comma-separated feed types; empty means all.
fn parse_types(raw: Option<&str>) -> Result<BTreeSet<FeedType>, ApiError> {
    let mut out = BTreeSet::new();
    for t in raw.unwrap_or_default().split(',').map(str::trim) {
        if t.is_empty() {
            continue;
        }
        let ty = FeedType::ALL
            .into_iter()
            .find(|k| k.name() == t)
            .ok_or_else(|| {
                ApiError::field(
                    "type",
                    format!(
                        "`{t}` is not a feed type: use event, alert or block (comma-separated)"
                    ),
                )
            })?;
        out.insert(ty);
    }
    if out.is_empty() {
        out.extend(FeedType::ALL);
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Window start: a duration back from now ("1h", "7d") or an RFC 3339 time; default "24h".
    #[param(example = "24h")]
    pub since: Option<String>,
    /// Only these item types, comma-separated: `event`, `alert`, `block` (default all).
    #[serde(rename = "type")]
    #[param(rename = "type", example = "event,alert")]
    pub kind: Option<String>,
    /// Only items of this VM (events from it, alerts it raised, blocks scoped to it).
    #[param(example = "vm-1", max_length = 128)]
    pub vm_id: Option<String>,
    /// Items per page (default 100; 0 gives only `total`).
    #[param(minimum = 0, maximum = 10000)]
    pub limit: Option<usize>,
    /// Items to skip.
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<usize>,
}

/// Host events, alerts and block decisions merged, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/feed",
    tag = "multi-vm",
    params(FeedQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Feed items, newest first", body = Feed),
        ParamErrors,
    )
)]
pub async fn feed(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<FeedQuery>,
) -> Result<Json<Feed>, ApiError> {
    let since = parse_since(q.since.as_deref(), Utc::now())?;
    let types = parse_types(q.kind.as_deref())?;
    let vm = vm_filter(q.vm_id.as_deref())?;
    let (offset, limit) = page(q.limit, q.offset)?;
    let mut items = Vec::new();
    if types.contains(&FeedType::Event) {
        let events = load_events(&state, since, vm.as_deref(), false).await?;
        items.extend(events.into_iter().map(FeedItem::from_event));
    }
    if types.contains(&FeedType::Alert) {
        let alerts = load_alerts(&state, since).await?;
        items.extend(
            alerts
                .into_iter()
                .filter(|a| vm.as_deref().is_none_or(|v| a.sensor_id == v))
                .map(FeedItem::from_alert),
        );
    }
    if types.contains(&FeedType::Block) {
        let blocks = load_blocks(&state).await?;
        items.extend(
            blocks
                .into_iter()
                .filter(|b| b.created_at >= since)
                .filter(|b| {
                    vm.as_deref()
                        .is_none_or(|v| matches!(&b.scope, Scope::Sensor(s) if s == v))
                })
                .map(FeedItem::from_block),
        );
    }
    Ok(Json(paged(items, since, offset, limit)))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttacksQuery {
    /// Window start: a duration back from now ("1h", "7d") or an RFC 3339 time; default "24h".
    #[param(example = "24h")]
    pub since: Option<String>,
    /// Items per page (default 100; 0 gives only `total`).
    #[param(minimum = 0, maximum = 10000)]
    pub limit: Option<usize>,
    /// Items to skip.
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<usize>,
}

/// One VM's attacks: its failed logins and the alerts it raised, newest first (feed items of type
/// `event` and `alert`).
#[utoipa::path(
    get,
    path = "/api/v1/vms/{vm_id}/attacks",
    tag = "multi-vm",
    params(
        ("vm_id" = String, Path, description = "The VM (sensor id)", example = "vm-1", max_length = 128),
        AttacksQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The VM's failed logins and alerts, newest first", body = Feed),
        NotFoundError,
        ParamErrors,
    )
)]
pub async fn vm_attacks(
    _: Auth<Read>,
    State(state): State<ApiState>,
    vm_id: Result<Path<String>, PathRejection>,
    ApiQuery(q): ApiQuery<AttacksQuery>,
) -> Result<Json<Feed>, ApiError> {
    let Path(vm) = vm_id.map_err(|r| ApiError::field("vm_id", r.body_text()))?;
    check_vm_id(&vm, "vm_id")?;
    let since = parse_since(q.since.as_deref(), Utc::now())?;
    let (offset, limit) = page(q.limit, q.offset)?;
    let events = load_events(&state, since, Some(&vm), true).await?;
    let alerts: Vec<Alert> = load_alerts(&state, since)
        .await?
        .into_iter()
        .filter(|a| a.sensor_id == vm)
        .collect();
    if events.is_empty() && alerts.is_empty() && !is_known(&state, &vm).await? {
        return Err(ApiError::not_found(format!(
            "no VM `{vm}`: it is not registered and has no stored events (GET /api/v1/vms lists \
             the known VMs; POST /api/v1/vms registers one)"
        ))
        .with_field("vm_id"));
    }
    let items = events
        .into_iter()
        .map(FeedItem::from_event)
        .chain(alerts.into_iter().map(FeedItem::from_alert))
        .collect();
    Ok(Json(paged(items, since, offset, limit)))
}

/// A VM is known when it is this sensor, registered, or has any stored event.
pub(crate) async fn is_known(state: &ApiState, vm: &str) -> Result<bool, ApiError> {
    if vm == state.control.sensor_id() {
        return Ok(true);
    }
    let store = state.control.store();
    if store
        .list_sensors()
        .await
        .map_err(store_error)?
        .iter()
        .any(|s| s.id == vm)
    {
        return Ok(true);
    }
    let q = netguard_store::types::EventQuery {
        vm_id: Some(vm.to_owned()),
        limit: 1,
        ..Default::default()
    };
    Ok(!store.events(&q).await.map_err(store_error)?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_with_field_errors() {
        assert_eq!(parse_types(None).unwrap().len(), 3);
        assert_eq!(parse_types(Some(" ,")).unwrap().len(), 3);
        assert_eq!(
            parse_types(Some("alert, block"))
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            [FeedType::Alert, FeedType::Block]
        );
        let e = parse_types(Some("event,flows")).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("type"));
        assert!(e.body.error.contains("flows"), "{}", e.body.error);
    }

    #[test]
    fn order_is_total_and_newest_first() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let mut a = ListEntry::new("203.0.113.0/24".parse().unwrap(), Scope::Global);
        a.created_at = t("2024-05-01T10:00:00Z");
        let mut b = a.clone();
        b.cidr = "198.51.100.0/24".parse().unwrap();
        let mut c = a.clone();
        c.created_at = t("2024-05-01T11:00:00Z");
        c.scope = Scope::Sensor("vm-1".into());
        let items = vec![
            FeedItem::from_block(a),
            FeedItem::from_block(b),
            FeedItem::from_block(c),
        ];
        let feed = paged(items, t("2024-05-01T00:00:00Z"), 1, 5);
        assert_eq!(feed.total, 3);
        let srcs: Vec<&str> = feed.items.iter().map(|i| i.src.as_str()).collect();
        // Page from offset 1: the newest (11:00) is skipped; the 10:00 tie is ordered by id.
        assert_eq!(srcs, ["198.51.100.0/24", "203.0.113.0/24"]);
        assert_eq!(feed.items[0].vm_id, None);
    }
}

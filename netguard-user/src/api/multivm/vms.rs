//! The VM registry: `GET /vms`, `POST /vms`, `DELETE /vms/{vm_id}`. A VM is a sensor id (the store's
//! [`Sensor`] registry); `description` and `tags` are kept in its labels under those two keys.
//!
//! - `GET` lists every registered VM, this sensor, and every VM with events or alerts in the last 24
//!   hours, by id; `registered` tells them apart.
//! - `POST` answers 201 for a new VM, 200 when the id was already registered: it is then updated
//!   (name, description and tags replaced, `registered_at` kept), so an agent can register at every
//!   start.
//! - `DELETE` answers 404 for an id that is not registered. The VM's scoped blocks stay in force
//!   (a blocked attacker stays blocked) unless `?remove_blocks=true`, which removes them first through
//!   the control plane (kernel, store, WebSocket "unblock").

use std::collections::{BTreeMap, BTreeSet};

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::StatusCode,
};
use chrono::{DateTime, Duration, Utc};
use netguard_store::{ListKind, Scope, Sensor, types::EventQuery};
use serde::{Deserialize, Serialize};

use super::{check_vm_id, load_alerts, load_blocks, load_events, page, weight};
use crate::api::{
    ApiState,
    auth::{Auth, Read, Write},
    error::{ApiError, ApiJson, ApiQuery, store_error},
    responses::{BodyErrors, NotFoundError, ParamErrors},
};

/// Label keys that hold `description` and `tags` (comma-separated).
pub const DESCRIPTION_LABEL: &str = "description";
pub const TAGS_LABEL: &str = "tags";
pub const MAX_NAME: usize = 128;
pub const MAX_DESCRIPTION: usize = 1024;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG: usize = 64;

/// A VM as `GET /vms` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmView {
    /// The VM's sensor id.
    #[schema(example = "vm-1")]
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Sorted.
    pub tags: Vec<String>,
    /// Other labels of the registry entry.
    pub labels: BTreeMap<String, String>,
    /// In the registry (`POST /api/v1/vms`); false for a VM only seen in events or alerts.
    pub registered: bool,
    pub registered_at: Option<DateTime<Utc>>,
    /// Whether this is the sensor answering.
    pub this_sensor: bool,
    /// When its newest stored event was received, or its newest alert of the last 24 hours, if later.
    pub last_seen: Option<DateTime<Utc>>,
    /// Failed logins against it in the last 24 hours (by the events' own time).
    pub failures_24h: u64,
    /// Alerts it raised in the last 24 hours.
    pub alerts_24h: u64,
    /// Blocklist entries scoped to it now.
    pub active_scoped_blocks: usize,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmList {
    /// VMs listed before paging.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// By id.
    pub vms: Vec<VmView>,
}

/// `POST /api/v1/vms`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRegistration {
    /// The VM's id, as its agent tags events (`source_vm_id`) and as block scopes name it: at most 128
    /// bytes, no whitespace, not "global".
    #[schema(example = "vm-1", max_length = 128)]
    pub id: String,
    /// Display name, at most 128 characters.
    #[serde(default)]
    #[schema(example = "Web server 1", max_length = 128)]
    pub name: Option<String>,
    /// Free text, at most 1024 characters.
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// At most 32 tags of 1-64 characters from `A-Z a-z 0-9 . _ : -`.
    #[serde(default)]
    #[schema(example = json!(["windows", "prod"]), max_items = 32)]
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VmListQuery {
    /// VMs per page (default 100; 0 gives only `total`).
    #[param(minimum = 0, maximum = 10000)]
    pub limit: Option<usize>,
    /// VMs to skip (sorted by id).
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveVmQuery {
    /// Also remove the blocklist entries scoped to this VM (default false: they stay in force).
    pub remove_blocks: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmRemoved {
    pub id: String,
    /// Always true (an unknown VM is a 404).
    pub removed: bool,
    /// Entries scoped to it that this request removed (only with `remove_blocks=true`).
    pub scoped_blocks_removed: usize,
    /// Entries scoped to it still in the blocklist.
    pub scoped_blocks_remaining: usize,
}

fn has_control(s: &str, allow_newlines: bool) -> bool {
    s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
}

/// The registry entry for a registration, validated; `existing` keeps its time and other labels.
pub(crate) fn to_sensor(
    r: &VmRegistration,
    existing: Option<&Sensor>,
    now: DateTime<Utc>,
) -> Result<Sensor, ApiError> {
    check_vm_id(&r.id, "id")?;
    // Lengths are checked before trimming, as the OpenAPI document states them.
    if let Some(n) = &r.name
        && (n.chars().count() > MAX_NAME || has_control(n, false))
    {
        return Err(ApiError::field(
            "name",
            format!("give at most {MAX_NAME} characters without control characters"),
        ));
    }
    if let Some(d) = &r.description
        && (d.chars().count() > MAX_DESCRIPTION || has_control(d, true))
    {
        return Err(ApiError::field(
            "description",
            format!(
                "give at most {MAX_DESCRIPTION} characters without control characters \
                 (newlines and tabs are fine)"
            ),
        ));
    }
    let name = r.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
    let description = r
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let tags = r.tags.as_deref().unwrap_or_default();
    if tags.len() > MAX_TAGS {
        return Err(ApiError::field(
            "tags",
            format!("{} tags is over the maximum of {MAX_TAGS}", tags.len()),
        ));
    }
    let mut set = BTreeSet::new();
    for (i, t) in tags.iter().enumerate() {
        let ok = (1..=MAX_TAG).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !ok {
            return Err(ApiError::field(
                format!("tags[{i}]"),
                format!("`{t}` is not a tag: use 1-{MAX_TAG} characters from A-Z a-z 0-9 . _ : -"),
            ));
        }
        set.insert(t.clone());
    }
    let mut labels = existing.map(|s| s.labels.clone()).unwrap_or_default();
    labels.remove(DESCRIPTION_LABEL);
    labels.remove(TAGS_LABEL);
    if let Some(d) = description {
        labels.insert(DESCRIPTION_LABEL.into(), d.to_owned());
    }
    if !set.is_empty() {
        labels.insert(
            TAGS_LABEL.into(),
            set.into_iter().collect::<Vec<_>>().join(","),
        );
    }
    Ok(Sensor {
        id: r.id.clone(),
        name: name.map(str::to_owned),
        registered_at: existing.map_or(now, |s| s.registered_at),
        labels,
    })
}

/// A VM with no activity figures yet.
fn view(id: &str, sensor: Option<&Sensor>, this_sensor: &str) -> VmView {
    let mut labels = sensor.map(|s| s.labels.clone()).unwrap_or_default();
    let description = labels.remove(DESCRIPTION_LABEL);
    let tags = labels
        .remove(TAGS_LABEL)
        .map(|t| {
            t.split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    VmView {
        id: id.to_owned(),
        name: sensor.and_then(|s| s.name.clone()),
        description,
        tags,
        labels,
        registered: sensor.is_some(),
        registered_at: sensor.map(|s| s.registered_at),
        this_sensor: id == this_sensor,
        last_seen: None,
        failures_24h: 0,
        alerts_24h: 0,
        active_scoped_blocks: 0,
    }
}

/// Registered VMs, this sensor, and VMs active in the last 24 hours, with their figures.
#[utoipa::path(
    get,
    path = "/api/v1/vms",
    tag = "multi-vm",
    params(VmListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "VMs by id", body = VmList),
        ParamErrors,
    )
)]
pub async fn list_vms(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<VmListQuery>,
) -> Result<Json<VmList>, ApiError> {
    let (offset, limit) = page(q.limit, q.offset)?;
    let now = Utc::now();
    let day = now - Duration::hours(24);
    let store = state.control.store();
    let sensors: BTreeMap<String, Sensor> = store
        .list_sensors()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    // One pass over the (capped) event history, newest received first: each VM's first event there
    // is its newest, whatever its age.
    let history = store
        .events(&EventQuery::default())
        .await
        .map_err(store_error)?;
    let mut newest_event: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    for e in &history {
        newest_event
            .entry(e.source_vm_id.as_str())
            .or_insert(e.received_at);
    }
    let events: Vec<_> = history.iter().filter(|e| e.ts >= day).collect();
    let alerts = load_alerts(&state, day).await?;
    let blocks = load_blocks(&state).await?;
    let me = state.control.sensor_id();
    let mut ids: BTreeSet<&str> = sensors.keys().map(String::as_str).collect();
    ids.insert(me);
    ids.extend(events.iter().map(|e| e.source_vm_id.as_str()));
    ids.extend(alerts.iter().map(|a| a.sensor_id.as_str()));
    let total = ids.len();
    let mut vms = Vec::new();
    for id in ids.into_iter().skip(offset).take(limit) {
        let mut v = view(id, sensors.get(id), me);
        v.failures_24h = events
            .iter()
            .filter(|e| e.failure && e.source_vm_id == id)
            .count() as u64;
        let own_alerts = alerts.iter().filter(|a| a.sensor_id == id);
        v.alerts_24h = own_alerts.clone().map(weight).sum();
        v.active_scoped_blocks = blocks
            .iter()
            .filter(|b| matches!(&b.scope, Scope::Sensor(s) if s == id))
            .count();
        v.last_seen = newest_event
            .get(id)
            .copied()
            .max(own_alerts.map(|a| a.ts).max());
        vms.push(v);
    }
    Ok(Json(VmList {
        total,
        offset,
        limit,
        vms,
    }))
}

/// Registers a VM (201), or updates a registered one (200).
#[utoipa::path(
    post,
    path = "/api/v1/vms",
    tag = "multi-vm",
    request_body = VmRegistration,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = VmView),
        (status = 200, description = "Was registered already: updated (registered_at kept)", body = VmView),
        BodyErrors,
    )
)]
pub async fn register_vm(
    _: Auth<Write>,
    State(state): State<ApiState>,
    ApiJson(r): ApiJson<VmRegistration>,
) -> Result<(StatusCode, Json<VmView>), ApiError> {
    let store = state.control.store();
    let existing = store
        .list_sensors()
        .await
        .map_err(store_error)?
        .into_iter()
        .find(|s| s.id == r.id);
    let sensor = to_sensor(&r, existing.as_ref(), Utc::now())?;
    store
        .put_sensor(&sensor)
        .await
        .map_err(|e| store_error(e).rename_fields(&[("sensor_id", "id")]))?;
    let blocks = load_blocks(&state).await?;
    let mut v = view(&sensor.id, Some(&sensor), state.control.sensor_id());
    v.active_scoped_blocks = blocks
        .iter()
        .filter(|b| matches!(&b.scope, Scope::Sensor(s) if *s == sensor.id))
        .count();
    let day = Utc::now() - Duration::hours(24);
    let events = load_events(&state, day, Some(&sensor.id), true).await?;
    v.failures_24h = events.len() as u64;
    v.last_seen = events.iter().map(|e| e.received_at).max();
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(v)))
}

/// Unregisters a VM. Its scoped blocks stay unless `remove_blocks=true`.
#[utoipa::path(
    delete,
    path = "/api/v1/vms/{vm_id}",
    tag = "multi-vm",
    params(
        ("vm_id" = String, Path, description = "The VM (sensor id)", example = "vm-1", max_length = 128),
        RemoveVmQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Unregistered", body = VmRemoved),
        NotFoundError,
        ParamErrors,
    )
)]
pub async fn remove_vm(
    _: Auth<Write>,
    State(state): State<ApiState>,
    vm_id: Result<Path<String>, PathRejection>,
    ApiQuery(q): ApiQuery<RemoveVmQuery>,
) -> Result<Json<VmRemoved>, ApiError> {
    let Path(id) = vm_id.map_err(|r| ApiError::field("vm_id", r.body_text()))?;
    check_vm_id(&id, "vm_id")?;
    let store = state.control.store();
    if !store
        .list_sensors()
        .await
        .map_err(store_error)?
        .iter()
        .any(|s| s.id == id)
    {
        return Err(ApiError::not_found(format!(
            "VM `{id}` is not registered (GET /api/v1/vms lists the VMs)"
        ))
        .with_field("vm_id"));
    }
    let scoped = |blocks: &[netguard_store::ListEntry]| -> Vec<String> {
        blocks
            .iter()
            .filter(|b| matches!(&b.scope, Scope::Sensor(s) if *s == id))
            .map(|b| b.cidr.to_string())
            .collect()
    };
    let mut removed = 0;
    if q.remove_blocks.unwrap_or(false) {
        // Blocks first: if one fails, the VM is still registered and the request can be retried.
        for cidr in scoped(&load_blocks(&state).await?) {
            removed += state
                .control
                .remove(ListKind::Block, &cidr, Some(&id))
                .await?;
        }
    }
    store.remove_sensor(&id).await.map_err(store_error)?;
    let remaining = scoped(&load_blocks(&state).await?).len();
    Ok(Json(VmRemoved {
        id,
        removed: true,
        scoped_blocks_removed: removed,
        scoped_blocks_remaining: remaining,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str) -> VmRegistration {
        VmRegistration {
            id: id.into(),
            name: None,
            description: None,
            tags: None,
        }
    }

    #[test]
    fn registration_validates_and_keeps_labels() {
        let now = Utc::now();
        let mut r = reg("vm-1");
        r.name = Some(" Web 1 ".into());
        r.description = Some("front\nend".into());
        r.tags = Some(vec!["prod".into(), "eu:west".into(), "prod".into()]);
        let s = to_sensor(&r, None, now).unwrap();
        assert_eq!(s.name.as_deref(), Some("Web 1"));
        assert_eq!(s.labels[TAGS_LABEL], "eu:west,prod");
        let v = view("vm-1", Some(&s), "other");
        assert_eq!(v.tags, ["eu:west", "prod"]);
        assert_eq!(v.description.as_deref(), Some("front\nend"));
        assert!(v.labels.is_empty() && v.registered && !v.this_sensor);

        // An update keeps registered_at and foreign labels, and replaces the rest.
        let mut old = s.clone();
        old.registered_at = now - Duration::days(3);
        old.labels.insert("site".into(), "fra".into());
        let s2 = to_sensor(&reg("vm-1"), Some(&old), now).unwrap();
        assert_eq!(s2.registered_at, old.registered_at);
        assert_eq!(s2.labels.len(), 1);
        assert_eq!(s2.labels["site"], "fra");

        let field = |r: VmRegistration| to_sensor(&r, None, now).unwrap_err().body.field;
        assert_eq!(field(reg("global")).as_deref(), Some("id"));
        assert_eq!(field(reg("a b")).as_deref(), Some("id"));
        let mut r = reg("vm-1");
        r.tags = Some(vec!["ok".into(), "no,comma".into()]);
        assert_eq!(field(r).as_deref(), Some("tags[1]"));
        let mut r = reg("vm-1");
        r.name = Some("x".repeat(MAX_NAME + 1));
        assert_eq!(field(r).as_deref(), Some("name"));
        let mut r = reg("vm-1");
        r.description = Some("bell\u{7}".into());
        assert_eq!(field(r).as_deref(), Some("description"));
    }
}

//! The multi-VM API (seed-compatible, DESIGN.md "REST"): what the fleet's VMs (sensors, and agents
//! posting host events) see of attacks, built from the store's history.
//!
//! | route | what |
//! |---|---|
//! | `GET /suspicious-ips` | source addresses with failed logins and/or alerts in a window, aggregated |
//! | `GET /statistics` | one VM's figures (this sensor's by default) |
//! | `GET /statistics/global` | the same over every VM, per VM, and the top attackers |
//! | `GET /feed` | host events, alerts and block decisions merged, newest first |
//! | `GET /vms`, `POST /vms` | the VM registry (plus active unregistered VMs), registration |
//! | `DELETE /vms/{vm_id}` | unregister; scoped blocks stay unless `?remove_blocks=true` |
//! | `GET /vms/{vm_id}/attacks` | failed logins and alerts of one VM |
//! | `GET /geo-attacks` | attacks per country (and city) from the `--geoip-db` MaxMind file |
//!
//! Common rules:
//! - A window (`?since=`) is a duration back from now ("1h", "7d") or an RFC 3339 time
//!   ("2024-05-01T12:00:00Z"); the default is 24h. An event is in the window when its own time `ts`
//!   is, an alert when its `ts` is, a block when its `created_at` is.
//! - Reads come from the store: host events ([`Store::events`](netguard_store::Store::events), whose
//!   history is capped), at most the newest [`MAX_ALERTS_SCANNED`] alerts, and the live blocklist
//!   (blocks are "active now", never windowed). An alert counts `count` times (its deduplicated
//!   repeats).
//! - "Attacks" are failed logins and alerts; successful logins are counted apart and never make an
//!   address suspicious.
//! - Lists page with `?limit=` (default 100, at most 10,000; 0 gives only `total`) and `?offset=`,
//!   and carry `total`, the count before paging.
//! - Reads need the viewer role or above; `POST`/`DELETE /vms` the operator role. Agents, whose
//!   tokens may only post events, get 403 everywhere here.

mod feed;
mod geo_attacks;
mod ips;
mod vms;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    http::StatusCode,
    routing::{delete, get},
};
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_store::{
    Alert, AlertQuery, DEFAULT_ALERT_CAP, ListEntry, ListKind, Scope, StoreError,
    types::{EventQuery, HostEventRecord, validate_sensor_id},
};
use utoipa::OpenApi;

use super::{ApiState, error::ApiError, error::store_error};
use crate::geo::GeoDb;

pub use feed::{Feed, FeedItem, FeedType};
pub use geo_attacks::{CityAttacks, CountryAttacks, GeoAttacks, GeoDatabase};
pub use ips::{
    BlockCounts, GlobalStatistics, Statistics, SuspiciousIp, SuspiciousIps, VmStatistics,
};
pub use vms::{VmList, VmRegistration, VmRemoved, VmView};

/// Window when `?since=` is absent.
pub const DEFAULT_SINCE: &str = "24h";
/// Longest window accepted as a duration.
pub const MAX_WINDOW: Duration = Duration::from_secs(3650 * 86_400);
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;
pub const MAX_OFFSET: usize = super::lists::MAX_OFFSET;
/// Alerts considered, newest first; the default alert history holds this many.
pub const MAX_ALERTS_SCANNED: usize = DEFAULT_ALERT_CAP;

/// The routes, merged into the API router.
pub fn routes() -> Router<ApiState> {
    let api = |p: &str| format!("{}{p}", super::PREFIX);
    Router::new()
        .route(&api("/suspicious-ips"), get(ips::suspicious_ips))
        .route(&api("/statistics"), get(ips::statistics))
        .route(&api("/statistics/global"), get(ips::global_statistics))
        .route(&api("/geo-attacks"), get(geo_attacks::geo_attacks))
        .route(&api("/feed"), get(feed::feed))
        .route(&api("/vms"), get(vms::list_vms).post(vms::register_vm))
        .route(&api("/vms/{vm_id}"), delete(vms::remove_vm))
        .route(&api("/vms/{vm_id}/attacks"), get(feed::vm_attacks))
}

/// This module's part of the OpenAPI document, merged into [`super::openapi::ApiDoc`]'s.
#[derive(OpenApi)]
#[openapi(
    paths(
        ips::suspicious_ips,
        ips::statistics,
        ips::global_statistics,
        geo_attacks::geo_attacks,
        feed::feed,
        vms::list_vms,
        vms::register_vm,
        vms::remove_vm,
        feed::vm_attacks,
    ),
    tags((name = "multi-vm", description = "Attacks across the fleet's VMs: suspicious sources, \
        statistics, the merged feed, the VM registry and GeoIP (seed-compatible)"))
)]
pub struct MultiVmDoc;

impl ApiState {
    /// Serves `/geo-attacks` from `db` (without one it answers 503 `geoip_unavailable`).
    pub fn with_geoip(mut self, db: Arc<GeoDb>) -> Self {
        self.geo = Some(db);
        self
    }
}

/// The window start of `?since=`: a duration back from `now` or an RFC 3339 time.
pub(crate) fn parse_since(
    raw: Option<&str>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    let s = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SINCE);
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        ApiError::field(
            "since",
            format!(
                "`{s}` is neither a duration such as \"1h\" or \"7d\" nor an RFC 3339 time such as \
                 \"2024-05-01T12:00:00Z\" (send `+` in an offset as %2B)"
            ),
        )
    })?;
    if d.is_zero() {
        return Err(ApiError::field(
            "since",
            "must be longer than zero, e.g. \"1h\"",
        ));
    }
    if d > MAX_WINDOW {
        return Err(ApiError::field(
            "since",
            format!("`{s}` is longer than the 3650-day maximum; give an RFC 3339 time instead"),
        ));
    }
    let d = chrono::Duration::from_std(d).map_err(|_| ApiError::field("since", "too long"))?;
    Ok(now - d)
}

/// A VM id given as a filter or path parameter, checked like a sensor id; the error names `field`.
pub(crate) fn check_vm_id(id: &str, field: &str) -> Result<(), ApiError> {
    validate_sensor_id(id).map_err(|e| match e {
        StoreError::Invalid { detail, .. } => {
            ApiError::field(field, detail.replacen("sensor id", "VM id", 1))
        }
        other => store_error(other),
    })
}

/// `?vm_id=`: absent or empty means every VM.
pub(crate) fn vm_filter(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    // Not trimmed: the documented length limit applies to the value as sent.
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => check_vm_id(v, "vm_id").map(|()| Some(v.to_owned())),
    }
}

/// `(offset, limit)` of `?offset=&limit=`, validated.
pub(crate) fn page(
    limit: Option<usize>,
    offset: Option<usize>,
) -> Result<(usize, usize), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit > MAX_LIMIT {
        return Err(ApiError::field(
            "limit",
            format!("{limit} is over the maximum of {MAX_LIMIT}; page with offset"),
        ));
    }
    let offset = offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::field(
            "offset",
            format!("{offset} is over the maximum of {MAX_OFFSET}"),
        ));
    }
    Ok((offset, limit))
}

/// Stored host events whose own time is at or after `since`, newest first, of one VM when `vm` is
/// given. The store filters on `received_at`, which is never before `ts`, so nothing in the window is
/// missed.
pub(crate) async fn load_events(
    state: &ApiState,
    since: DateTime<Utc>,
    vm: Option<&str>,
    failures_only: bool,
) -> Result<Vec<HostEventRecord>, ApiError> {
    let q = EventQuery {
        vm_id: vm.map(str::to_owned),
        since: Some(since),
        failures_only,
        ..EventQuery::default()
    };
    let mut events = state
        .control
        .store()
        .events(&q)
        .await
        .map_err(store_error)?;
    events.retain(|e| e.ts >= since);
    Ok(events)
}

/// Alerts at or after `since`, newest first (of at most [`MAX_ALERTS_SCANNED`]). Reads a small page
/// first and a larger one only when the window reaches past it.
pub(crate) async fn load_alerts(
    state: &ApiState,
    since: DateTime<Utc>,
) -> Result<Vec<Alert>, ApiError> {
    let mut limit = 1000;
    loop {
        let alerts = state
            .control
            .alerts(AlertQuery {
                limit,
                class: None,
                src: None,
            })
            .await?;
        let done = alerts.len() < limit
            || limit >= MAX_ALERTS_SCANNED
            || alerts.last().is_some_and(|a| a.ts < since);
        if done {
            return Ok(alerts.into_iter().filter(|a| a.ts >= since).collect());
        }
        limit = (limit * 10).min(MAX_ALERTS_SCANNED);
    }
}

/// The live blocklist, every scope.
pub(crate) async fn load_blocks(state: &ApiState) -> Result<Vec<ListEntry>, ApiError> {
    state
        .control
        .store()
        .list_entries(ListKind::Block)
        .await
        .map_err(store_error)
}

/// How many times an alert counts (its deduplicated repeats, at least once).
pub(crate) fn weight(a: &Alert) -> u64 {
    u64::from(a.count.max(1))
}

/// Which blocklist scopes cover an address: one hash lookup per prefix length in use.
pub(crate) struct BlockIndex {
    nets: HashMap<IpNet, BTreeSet<String>>,
    lens_v4: BTreeSet<u8>,
    lens_v6: BTreeSet<u8>,
}

impl BlockIndex {
    pub(crate) fn new(entries: &[ListEntry]) -> Self {
        let mut idx = BlockIndex {
            nets: HashMap::new(),
            lens_v4: BTreeSet::new(),
            lens_v6: BTreeSet::new(),
        };
        for e in entries {
            match e.cidr {
                IpNet::V4(_) => idx.lens_v4.insert(e.cidr.prefix_len()),
                IpNet::V6(_) => idx.lens_v6.insert(e.cidr.prefix_len()),
            };
            idx.nets
                .entry(e.cidr.trunc())
                .or_default()
                .insert(e.scope.to_string());
        }
        idx
    }

    /// The scopes of every entry containing `ip`: "global" first, then VM ids in order.
    pub(crate) fn scopes(&self, ip: IpAddr) -> Vec<String> {
        let lens = match ip {
            IpAddr::V4(_) => &self.lens_v4,
            IpAddr::V6(_) => &self.lens_v6,
        };
        let mut found = BTreeSet::new();
        for len in lens {
            if let Ok(net) = IpNet::new(ip, *len)
                && let Some(scopes) = self.nets.get(&net.trunc())
            {
                found.extend(scopes.iter().cloned());
            }
        }
        let global = found.remove(Scope::GLOBAL);
        global
            .then(|| Scope::GLOBAL.to_owned())
            .into_iter()
            .chain(found)
            .collect()
    }
}

/// The answer when `/geo-attacks` has no database.
pub(crate) fn geoip_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no GeoIP database is loaded: start the daemon with --geoip-db PATH (or `geoip_db` under \
         [api] in the config file) pointing at a MaxMind GeoLite2-City or GeoLite2-Country .mmdb file",
    )
    .with_code("geoip_unavailable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn since_accepts_durations_and_times() {
        let now = t("2024-05-02T12:00:00Z");
        assert_eq!(parse_since(None, now).unwrap(), t("2024-05-01T12:00:00Z"));
        assert_eq!(
            parse_since(Some(""), now).unwrap(),
            t("2024-05-01T12:00:00Z")
        );
        assert_eq!(
            parse_since(Some("1h"), now).unwrap(),
            t("2024-05-02T11:00:00Z")
        );
        assert_eq!(
            parse_since(Some("2024-05-02T10:30:00+02:00"), now).unwrap(),
            t("2024-05-02T08:30:00Z")
        );
        for bad in ["soon", "0s", "5000d", "2024-05-02 10:30:00 02:00"] {
            let e = parse_since(Some(bad), now).unwrap_err();
            assert_eq!(e.body.field.as_deref(), Some("since"), "{bad}");
        }
    }

    #[test]
    fn paging_and_vm_filter_name_their_fields() {
        assert_eq!(page(None, None).unwrap(), (0, DEFAULT_LIMIT));
        assert_eq!(page(Some(0), Some(5)).unwrap(), (5, 0));
        assert_eq!(
            page(Some(MAX_LIMIT + 1), None)
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("limit")
        );
        assert_eq!(
            page(None, Some(MAX_OFFSET + 1))
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("offset")
        );
        assert_eq!(vm_filter(Some("")).unwrap(), None);
        assert_eq!(
            vm_filter(Some(&" ".repeat(200)))
                .unwrap_err()
                .body
                .field
                .as_deref(),
            Some("vm_id")
        );
        assert_eq!(vm_filter(Some("vm-1")).unwrap().as_deref(), Some("vm-1"));
        let e = vm_filter(Some("global")).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("vm_id"));
        assert!(e.body.error.contains("VM id"), "{}", e.body.error);
    }

    #[test]
    fn geoip_db_is_an_api_config_key() {
        let c =
            crate::config::Config::parse("[api]\ngeoip_db = \"/srv/GeoLite2-City.mmdb\"\n", "x")
                .unwrap();
        assert_eq!(
            c.api.geoip_db.as_deref(),
            Some(std::path::Path::new("/srv/GeoLite2-City.mmdb"))
        );
        assert_eq!(crate::config::Config::default().api.geoip_db, None);
        let e = geoip_unavailable();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body.code.as_deref(), Some("geoip_unavailable"));
    }

    #[test]
    fn block_index_finds_every_covering_scope() {
        let entry = |cidr: &str, scope: Scope| ListEntry::new(cidr.parse().unwrap(), scope);
        let idx = BlockIndex::new(&[
            entry("203.0.113.0/24", Scope::Sensor("vm-b".into())),
            entry("203.0.113.7/32", Scope::Global),
            entry("203.0.113.7/32", Scope::Sensor("vm-a".into())),
            entry("2001:db8::/32", Scope::Global),
        ]);
        assert_eq!(
            idx.scopes("203.0.113.7".parse().unwrap()),
            ["global", "vm-a", "vm-b"]
        );
        assert_eq!(idx.scopes("203.0.113.8".parse().unwrap()), ["vm-b"]);
        assert!(idx.scopes("198.51.100.1".parse().unwrap()).is_empty());
        assert_eq!(idx.scopes("2001:db8::5".parse().unwrap()), ["global"]);
    }
}

#[cfg(test)]
mod doc_tests {
    #[test]
    fn every_route_is_documented_with_shared_errors() {
        let doc: serde_json::Value = serde_json::from_str(crate::api::openapi::document()).unwrap();
        std::fs::write("/tmp/multivm-openapi.json", crate::api::openapi::document()).ok();
        let ops = [
            ("get", "/api/v1/suspicious-ips"),
            ("get", "/api/v1/statistics"),
            ("get", "/api/v1/statistics/global"),
            ("get", "/api/v1/geo-attacks"),
            ("get", "/api/v1/feed"),
            ("get", "/api/v1/vms"),
            ("post", "/api/v1/vms"),
            ("delete", "/api/v1/vms/{vm_id}"),
            ("get", "/api/v1/vms/{vm_id}/attacks"),
        ];
        for (method, path) in ops {
            let op = &doc["paths"][path][method];
            assert_eq!(op["tags"][0], "multi-vm", "{method} {path}");
            assert_eq!(
                op["security"][0]["bearer"],
                serde_json::json!([]),
                "{method} {path}"
            );
            for status in ["400", "401", "403", "503", "default"] {
                assert_eq!(
                    op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
        let params: Vec<&str> = doc["paths"]["/api/v1/suspicious-ips"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            params,
            ["since", "vm_id", "min_failures", "limit", "offset"]
        );
        let geo503 = doc["paths"]["/api/v1/geo-attacks"]["get"]["responses"]["503"]["description"]
            .as_str()
            .unwrap();
        assert!(geo503.contains("geoip_unavailable"), "{geo503}");
        assert!(doc["components"]["schemas"]["FeedItem"].is_object());
        assert!(doc["components"]["schemas"]["HostEventRecord"].is_object());
    }
}

//! `GET /suspicious-ips`, `GET /statistics` and `GET /statistics/global`: the
//! window's failed logins and alerts, aggregated per source address or per VM (countries: `geo_attacks`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use netguard_store::{Alert, EntrySource, ListEntry, Scope, types::HostEventRecord};
use serde::{Deserialize, Serialize};

use super::{
    BlockIndex, load_alerts, load_blocks, load_events, page, parse_since, vm_filter, weight,
};
use crate::api::{
    ApiState,
    auth::{Auth, Read},
    error::{ApiError, ApiQuery},
    responses::ParamErrors,
};

/// Usernames listed per address; `usernames_total` has the full count.
pub const USERNAME_SAMPLE: usize = 10;
pub const DEFAULT_TOP: usize = 10;
pub const MAX_TOP: usize = 100;
/// The `country_code`, `country` and `city` of addresses the database cannot place.
pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SuspiciousQuery {
    /// Window start: a duration back from now ("1h", "7d") or an RFC 3339 time; default "24h".
    #[param(example = "24h")]
    pub since: Option<String>,
    /// Only failed logins against, and alerts raised by, this VM (sensor id).
    #[param(example = "vm-1", max_length = 128)]
    pub vm_id: Option<String>,
    /// Only addresses with at least this many failed logins (default 0: any address with a failed
    /// login or an alert).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub min_failures: Option<u64>,
    /// Addresses per page (default 100; 0 gives only `total`).
    #[param(minimum = 0, maximum = 10000)]
    pub limit: Option<usize>,
    /// Addresses to skip (sorted by failures, most first).
    #[param(minimum = 0, maximum = 1000000000)]
    pub offset: Option<usize>,
}

/// One source address and what it did in the window.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuspiciousIp {
    #[schema(value_type = String, example = "203.0.113.7")]
    pub ip: IpAddr,
    /// Failed logins from it.
    pub failures: u64,
    /// Alerts about it (each counted with its repeats).
    pub alerts: u64,
    /// VMs it failed to log in to or that alerted on it, sorted.
    pub vms: Vec<String>,
    /// Its earliest and latest failed login or alert in the window.
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Usernames it tried, sorted, at most 10.
    pub usernames: Vec<String>,
    /// Distinct usernames it tried.
    pub usernames_total: usize,
    /// Services it failed to log in to ("ssh", "windows", ...), sorted.
    pub services: Vec<String>,
    /// Alerts about it, by class.
    pub alert_classes: BTreeMap<String, u64>,
    /// Whether a blocklist entry (any scope) covers it now.
    pub blocked: bool,
    /// The scopes of the entries covering it: "global" first, then VM ids.
    pub block_scopes: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuspiciousIps {
    /// Start of the window.
    pub since: DateTime<Utc>,
    /// Addresses matching the filters (before paging).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Most failed logins first, then most alerts, then most recent, then by address.
    pub ips: Vec<SuspiciousIp>,
}

#[derive(Default)]
struct IpAgg {
    failures: u64,
    alerts: u64,
    vms: BTreeSet<String>,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    usernames: BTreeSet<String>,
    services: BTreeSet<String>,
    classes: BTreeMap<String, u64>,
}

impl IpAgg {
    fn seen(&mut self, ts: DateTime<Utc>) {
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.last = Some(self.last.map_or(ts, |l| l.max(ts)));
    }
}

/// Every address with a failed login or an alert, sorted as documented on [`SuspiciousIps::ips`].
/// `events` and `alerts` are already filtered to the window and VM.
pub(crate) fn aggregate(
    events: &[HostEventRecord],
    alerts: &[Alert],
    blocks: &BlockIndex,
) -> Vec<SuspiciousIp> {
    let mut by_ip: HashMap<IpAddr, IpAgg> = HashMap::new();
    for e in events.iter().filter(|e| e.failure) {
        let a = by_ip.entry(e.src_ip).or_default();
        a.failures += 1;
        a.vms.insert(e.source_vm_id.clone());
        a.seen(e.ts);
        if let Some(u) = &e.username {
            a.usernames.insert(u.clone());
        }
        a.services.insert(e.service.clone());
    }
    for al in alerts {
        let a = by_ip.entry(al.src_ip).or_default();
        a.alerts += weight(al);
        a.vms.insert(al.sensor_id.clone());
        a.seen(al.ts);
        *a.classes.entry(al.class.clone()).or_default() += weight(al);
    }
    let mut out: Vec<SuspiciousIp> = by_ip
        .into_iter()
        .filter_map(|(ip, a)| {
            let block_scopes = blocks.scopes(ip);
            Some(SuspiciousIp {
                ip,
                failures: a.failures,
                alerts: a.alerts,
                vms: a.vms.into_iter().collect(),
                first_seen: a.first?,
                last_seen: a.last?,
                usernames_total: a.usernames.len(),
                usernames: a.usernames.into_iter().take(USERNAME_SAMPLE).collect(),
                services: a.services.into_iter().collect(),
                alert_classes: a.classes,
                blocked: !block_scopes.is_empty(),
                block_scopes,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (b.failures, b.alerts, b.last_seen, a.ip).cmp(&(a.failures, a.alerts, a.last_seen, b.ip))
    });
    out
}

/// Source addresses with failed logins and/or alerts in a window, aggregated.
#[utoipa::path(
    get,
    path = "/api/v1/suspicious-ips",
    tag = "multi-vm",
    params(SuspiciousQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Suspicious addresses, most failed logins first", body = SuspiciousIps),
        ParamErrors,
    )
)]
pub async fn suspicious_ips(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<SuspiciousQuery>,
) -> Result<Json<SuspiciousIps>, ApiError> {
    let since = parse_since(q.since.as_deref(), Utc::now())?;
    let vm = vm_filter(q.vm_id.as_deref())?;
    let min_failures = q.min_failures.unwrap_or(0);
    if min_failures > u64::from(u32::MAX) {
        return Err(ApiError::field(
            "min_failures",
            format!("{min_failures} is over the maximum of {}", u32::MAX),
        ));
    }
    let (offset, limit) = page(q.limit, q.offset)?;
    let events = load_events(&state, since, vm.as_deref(), true).await?;
    let alerts = alerts_of(load_alerts(&state, since).await?, vm.as_deref());
    let blocks = BlockIndex::new(&load_blocks(&state).await?);
    let mut all = aggregate(&events, &alerts, &blocks);
    all.retain(|s| s.failures >= min_failures);
    let total = all.len();
    let ips = all.into_iter().skip(offset).take(limit).collect();
    Ok(Json(SuspiciousIps {
        since,
        total,
        offset,
        limit,
        ips,
    }))
}

/// Alerts raised by `vm` (all when `None`).
pub(super) fn alerts_of(mut alerts: Vec<Alert>, vm: Option<&str>) -> Vec<Alert> {
    if let Some(vm) = vm {
        alerts.retain(|a| a.sensor_id == vm);
    }
    alerts
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatisticsQuery {
    /// Window start: a duration back from now ("1h", "7d") or an RFC 3339 time; default "24h".
    #[param(example = "24h")]
    pub since: Option<String>,
    /// The VM (sensor id) to report on; default: this sensor.
    #[param(example = "vm-1", max_length = 128)]
    pub vm_id: Option<String>,
}

/// Active blocklist entries by source (blocks are "now", not windowed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockCounts {
    pub total: usize,
    pub manual: usize,
    pub auto: usize,
    pub feed: usize,
    pub event: usize,
}

impl BlockCounts {
    fn of<'a>(entries: impl IntoIterator<Item = &'a ListEntry>) -> Self {
        let mut c = BlockCounts::default();
        for e in entries {
            c.total += 1;
            *match e.source {
                EntrySource::Manual => &mut c.manual,
                EntrySource::Auto => &mut c.auto,
                EntrySource::Feed => &mut c.feed,
                EntrySource::Event => &mut c.event,
            } += 1;
        }
        c
    }
}

/// One VM's figures for a window.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Statistics {
    /// The VM reported on.
    #[schema(example = "vm-1")]
    pub vm_id: String,
    /// Whether that VM is the sensor answering.
    pub this_sensor: bool,
    /// The window: `since` to `until` (now).
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub failed_logins: u64,
    pub successful_logins: u64,
    /// Distinct sources of its failed logins and alerts.
    pub unique_attacker_ips: usize,
    /// Alerts it raised (each counted with its repeats).
    pub alerts: u64,
    pub alerts_by_class: BTreeMap<String, u64>,
    /// Blocklist entries that apply to it now (global ones and those scoped to it), by source.
    pub blocks_active: BlockCounts,
}

/// Counts of one VM (or all, `vm` = None) over already-windowed events and alerts.
#[derive(Default)]
struct Counts {
    failed: u64,
    ok: u64,
    attackers: BTreeSet<IpAddr>,
    alerts: u64,
    classes: BTreeMap<String, u64>,
}

fn count(events: &[HostEventRecord], alerts: &[Alert], vm: Option<&str>) -> Counts {
    let mut c = Counts::default();
    for e in events
        .iter()
        .filter(|e| vm.is_none_or(|v| e.source_vm_id == v))
    {
        if e.failure {
            c.failed += 1;
            c.attackers.insert(e.src_ip);
        } else {
            c.ok += 1;
        }
    }
    for a in alerts
        .iter()
        .filter(|a| vm.is_none_or(|v| a.sensor_id == v))
    {
        c.alerts += weight(a);
        *c.classes.entry(a.class.clone()).or_default() += weight(a);
        c.attackers.insert(a.src_ip);
    }
    c
}

/// This sensor's (or one VM's) statistics for a window.
#[utoipa::path(
    get,
    path = "/api/v1/statistics",
    tag = "multi-vm",
    params(StatisticsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The VM's figures for the window", body = Statistics),
        ParamErrors,
    )
)]
pub async fn statistics(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<StatisticsQuery>,
) -> Result<Json<Statistics>, ApiError> {
    let now = Utc::now();
    let since = parse_since(q.since.as_deref(), now)?;
    let vm = vm_filter(q.vm_id.as_deref())?.unwrap_or_else(|| state.control.sensor_id().to_owned());
    let events = load_events(&state, since, Some(&vm), false).await?;
    let alerts = load_alerts(&state, since).await?;
    let blocks = load_blocks(&state).await?;
    let c = count(&events, &alerts, Some(&vm));
    let applies = |s: &Scope| match s {
        Scope::Global => true,
        Scope::Sensor(id) => *id == vm,
    };
    let blocks_active = BlockCounts::of(blocks.iter().filter(|e| applies(&e.scope)));
    Ok(Json(Statistics {
        this_sensor: vm == state.control.sensor_id(),
        vm_id: vm,
        since,
        until: now,
        failed_logins: c.failed,
        successful_logins: c.ok,
        unique_attacker_ips: c.attackers.len(),
        alerts: c.alerts,
        alerts_by_class: c.classes,
        blocks_active,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GlobalStatisticsQuery {
    /// Window start: a duration back from now ("1h", "7d") or an RFC 3339 time; default "24h".
    #[param(example = "24h")]
    pub since: Option<String>,
    /// How many top attacker addresses to list (default 10).
    #[param(minimum = 1, maximum = 100)]
    pub top: Option<usize>,
}

/// One VM's line in the global statistics.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmStatistics {
    pub vm_id: String,
    /// Whether it is in the VM registry (`POST /api/v1/vms`).
    pub registered: bool,
    pub failed_logins: u64,
    pub successful_logins: u64,
    pub unique_attacker_ips: usize,
    pub alerts: u64,
    /// Blocklist entries scoped to it now.
    pub scoped_blocks: usize,
}

/// The fleet's figures for a window.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GlobalStatistics {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub failed_logins: u64,
    pub successful_logins: u64,
    pub unique_attacker_ips: usize,
    pub alerts: u64,
    pub alerts_by_class: BTreeMap<String, u64>,
    /// Every blocklist entry now, whatever its scope, by source.
    pub blocks_active: BlockCounts,
    /// Entries of scope "global" now.
    pub global_blocks: usize,
    /// Every registered VM and every VM with events or alerts in the window, by id.
    pub vms: Vec<VmStatistics>,
    /// The `top` addresses of `/suspicious-ips` (most failed logins first).
    pub top_attackers: Vec<SuspiciousIp>,
}

/// Statistics across every VM, per VM, and the top attacker addresses.
#[utoipa::path(
    get,
    path = "/api/v1/statistics/global",
    tag = "multi-vm",
    params(GlobalStatisticsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The fleet's figures for the window", body = GlobalStatistics),
        ParamErrors,
    )
)]
pub async fn global_statistics(
    _: Auth<Read>,
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<GlobalStatisticsQuery>,
) -> Result<Json<GlobalStatistics>, ApiError> {
    let now = Utc::now();
    let since = parse_since(q.since.as_deref(), now)?;
    let top = q.top.unwrap_or(DEFAULT_TOP);
    if !(1..=MAX_TOP).contains(&top) {
        return Err(ApiError::field(
            "top",
            format!("{top} is outside 1..={MAX_TOP}"),
        ));
    }
    let events = load_events(&state, since, None, false).await?;
    let alerts = load_alerts(&state, since).await?;
    let blocks = load_blocks(&state).await?;
    let registered: BTreeSet<String> = state
        .control
        .store()
        .list_sensors()
        .await
        .map_err(crate::api::error::store_error)?
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut ids = registered.clone();
    ids.extend(events.iter().map(|e| e.source_vm_id.clone()));
    ids.extend(alerts.iter().map(|a| a.sensor_id.clone()));
    let scoped = |id: &str| {
        blocks
            .iter()
            .filter(|e| matches!(&e.scope, Scope::Sensor(s) if s == id))
            .count()
    };
    let vms = ids
        .into_iter()
        .map(|id| {
            let c = count(&events, &alerts, Some(&id));
            VmStatistics {
                registered: registered.contains(&id),
                failed_logins: c.failed,
                successful_logins: c.ok,
                unique_attacker_ips: c.attackers.len(),
                alerts: c.alerts,
                scoped_blocks: scoped(&id),
                vm_id: id,
            }
        })
        .collect();
    let all = count(&events, &alerts, None);
    let mut top_attackers = aggregate(&events, &alerts, &BlockIndex::new(&blocks));
    top_attackers.truncate(top);
    Ok(Json(GlobalStatistics {
        since,
        until: now,
        failed_logins: all.failed,
        successful_logins: all.ok,
        unique_attacker_ips: all.attackers.len(),
        alerts: all.alerts,
        alerts_by_class: all.classes,
        blocks_active: BlockCounts::of(&blocks),
        global_blocks: blocks.iter().filter(|e| e.scope == Scope::Global).count(),
        vms,
        top_attackers,
    }))
}

#[cfg(test)]
pub(super) mod tests;

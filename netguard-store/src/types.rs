//! Domain types that the store persists. Their JSON shape is part of the product contract
//! (DESIGN.md: blocklist entry fields and alert JSON), so field names here are public API.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::StoreError;

/// Which list an entry belongs to. The two lists are stored separately so that an allow entry and a
/// block entry for the same CIDR can coexist (the datapath gives the allowlist precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ListKind {
    Block,
    Allow,
}

impl ListKind {
    pub const ALL: [ListKind; 2] = [ListKind::Block, ListKind::Allow];

    /// Lowercase name, used in JSON, Redis key names and redb table names.
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Block => "block",
            ListKind::Allow => "allow",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an entry applies: every sensor sharing the store, or one sensor only.
/// Serialised as the plain string "global" or the sensor id, as in `--scope global|SENSOR_ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Global,
    Sensor(String),
}

impl Scope {
    /// The reserved word for [`Scope::Global`]; a sensor can therefore never be called "global".
    pub const GLOBAL: &'static str = "global";
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str(Self::GLOBAL),
            Scope::Sensor(id) => f.write_str(id),
        }
    }
}

impl FromStr for Scope {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == Self::GLOBAL {
            return Ok(Scope::Global);
        }
        validate_sensor_id(s)?;
        Ok(Scope::Sensor(s.to_owned()))
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Who created an entry; the REST API shows it as `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EntrySource {
    Manual,
    Auto,
    Feed,
    Event,
}

/// One blocklist or allowlist entry. Identity is (kind, cidr, scope): putting an entry with the
/// same identity replaces the old one. Per-entry `hits` are not stored: they live in the kernel map.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListEntry {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "203.0.113.0/24"))]
    pub cidr: IpNet,
    /// "global" or a sensor id.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "global"))]
    pub scope: Scope,
    #[serde(default)]
    pub reason: Option<String>,
    pub source: EntrySource,
    pub created_at: DateTime<Utc>,
    /// `None` means permanent.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl ListEntry {
    /// A permanent manual entry created now, the common case for tests and the CLI.
    pub fn new(cidr: IpNet, scope: Scope) -> Self {
        ListEntry {
            cidr,
            scope,
            reason: None,
            source: EntrySource::Manual,
            created_at: Utc::now(),
            expires_at: None,
        }
    }

    /// Whether the entry has expired at `now` (an entry expiring exactly at `now` is expired).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Stable identity within one list, used as the key in both backends. The CIDR comes first and
    /// '@' separates it from the scope: a CIDR never contains '@', so the split is unambiguous
    /// even for IPv6 CIDRs full of ':' and for sensor ids containing ':'.
    pub fn id(&self) -> String {
        entry_id(&self.cidr, &self.scope)
    }
}

/// See [`ListEntry::id`].
pub fn entry_id(cidr: &IpNet, scope: &Scope) -> String {
    format!("{cidr}@{scope}")
}

/// Longest reason accepted; reasons are shown in tables and Grafana, not used as documents.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest sensor id accepted; ids end up in Redis keys and metric-free log lines.
pub const MAX_SENSOR_ID_LEN: usize = 128;

/// Checks a sensor id. Ids are user-chosen (`--sensor-id`), so the message says what to change.
pub fn validate_sensor_id(id: &str) -> Result<(), StoreError> {
    let problem = if id.is_empty() {
        Some("is empty")
    } else if id == Scope::GLOBAL {
        Some("is the reserved scope name \"global\"")
    } else if id.len() > MAX_SENSOR_ID_LEN {
        Some("is longer than 128 bytes")
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or control characters")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(StoreError::Invalid {
            field: "sensor_id",
            detail: format!("sensor id {id:?} {problem}: choose a short id such as the host name"),
        }),
        None => Ok(()),
    }
}

/// Checks entries before any of them is written, so that a bulk put is all or nothing even when
/// the backend itself could store anything. The REST layer maps [`StoreError::Invalid`] to a 400.
pub fn validate_entries(entries: &[ListEntry]) -> Result<(), StoreError> {
    for entry in entries {
        if entry.cidr != entry.cidr.trunc() {
            return Err(StoreError::Invalid {
                field: "cidr",
                detail: format!(
                    "{} has host bits set: use the network address {}",
                    entry.cidr,
                    entry.cidr.trunc()
                ),
            });
        }
        if let Scope::Sensor(id) = &entry.scope {
            validate_sensor_id(id)?;
        }
        if entry
            .reason
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REASON_LEN)
        {
            return Err(StoreError::Invalid {
                field: "reason",
                detail: format!(
                    "reason for {} is longer than {MAX_REASON_LEN} bytes",
                    entry.cidr
                ),
            });
        }
    }
    Ok(())
}

/// Index key for an expiry: milliseconds, rounded UP, so that an entry is never considered
/// expired before its real `expires_at` (the index only has millisecond resolution).
pub fn expiry_index_ms(t: DateTime<Utc>) -> i64 {
    let ms = t.timestamp_millis();
    if t.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    }
}

/// Index key for "now": milliseconds, rounded DOWN, the counterpart of [`expiry_index_ms`].
pub fn now_index_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Converts an index key back; out-of-range values (only from a corrupt index) become an error.
pub fn from_index_ms(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| StoreError::Corrupt {
            what: "expiry index".into(),
            detail: format!("timestamp {ms} ms is out of range"),
        })
}

fn one() -> u32 {
    1
}

/// One alert, exactly DESIGN.md's alert JSON plus `count`, the number of deduplicated repeats.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub ts: DateTime<Utc>,
    pub sensor_id: String,
    pub class: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub src_ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub dst_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    pub risk: u8,
    pub confidence: f32,
    pub mitre: String,
    pub action: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub evidence: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "one")]
    pub count: u32,
}

/// Filter for [`crate::Store::alerts`]. Results are newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertQuery {
    pub limit: usize,
    pub class: Option<String>,
    pub src: Option<IpAddr>,
}

impl Default for AlertQuery {
    /// The REST default, `GET /alerts?limit=100`.
    fn default() -> Self {
        AlertQuery {
            limit: 100,
            class: None,
            src: None,
        }
    }
}

impl AlertQuery {
    /// Whether an alert passes the class and source filters (the limit is applied by the caller).
    pub fn matches(&self, alert: &Alert) -> bool {
        self.class.as_ref().is_none_or(|c| *c == alert.class)
            && self.src.is_none_or(|s| s == alert.src_ip)
    }
}

/// A sensor (a host running `netguard`) known to the fleet; the seed API calls these "vms".
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sensor {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub registered_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One host event (a failed or successful login) after normalisation, as stored. Written by
/// [`crate::Store::record_events`], which keeps each fingerprint once per retention window.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostEventRecord {
    /// Lowercase hex SHA-256 over the event's time, source IP, username and source port
    /// (exactly-once key).
    pub fingerprint: String,
    /// When it happened (the event's own time).
    pub ts: DateTime<Utc>,
    /// When this sensor accepted it.
    pub received_at: DateTime<Utc>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "203.0.113.7"))]
    pub src_ip: IpAddr,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub src_port: Option<u16>,
    /// Normalised type: "ssh_failed", "ssh_invalid_user", "ssh_accepted", "windows_4625",
    /// "windows_4624", ...
    pub event_type: String,
    /// Service attacked: "ssh" (class ssh_brute_force) or e.g. "windows"/"rdp"/"smb" (class
    /// brute_force).
    pub service: String,
    /// true for a failed login.
    pub failure: bool,
    /// The VM (sensor/agent host) that saw it.
    pub source_vm_id: String,
}

/// Filter and page for [`crate::Store::events`]. Results are newest first (by `received_at`, which
/// is insertion order for one sensor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub vm_id: Option<String>,
    pub src_ip: Option<IpAddr>,
    /// Only events received at or after this instant.
    pub since: Option<DateTime<Utc>>,
    pub failures_only: bool,
    /// Matching events to skip (paging), counted after the filters.
    pub offset: usize,
    /// At most this many; 0 = no limit.
    pub limit: usize,
}

impl EventQuery {
    /// Whether an event passes the filters (offset and limit are applied by the caller).
    pub fn matches(&self, event: &HostEventRecord) -> bool {
        self.vm_id.as_ref().is_none_or(|v| *v == event.source_vm_id)
            && self.src_ip.is_none_or(|ip| ip == event.src_ip)
            && self.since.is_none_or(|t| event.received_at >= t)
            && (!self.failures_only || event.failure)
    }

    /// Whether `taken` results (after the offset) already fill the page.
    pub fn is_full(&self, taken: usize) -> bool {
        self.limit != 0 && taken >= self.limit
    }
}

/// Checks events before any is written, so a batch is all or nothing and a bad record found only
/// at a queued replay cannot happen.
pub fn validate_events(events: &[HostEventRecord]) -> Result<(), StoreError> {
    for event in events {
        let fp = &event.fingerprint;
        if fp.len() != 64 || !fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(StoreError::Invalid {
                field: "fingerprint",
                detail: format!(
                    "{fp:?} is not a lowercase hex SHA-256 (64 characters 0-9a-f): compute it \
                     with the events module's fingerprint function"
                ),
            });
        }
        validate_sensor_id(&event.source_vm_id).map_err(|e| match e {
            StoreError::Invalid { detail, .. } => StoreError::Invalid {
                field: "source_vm_id",
                detail,
            },
            other => other,
        })?;
    }
    Ok(())
}

/// An entry change as published on the Redis channel `<prefix>:changes` (JSON, tagged by `op`).
/// Other sensors apply it to their kernel maps, so that a global block reaches the whole fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum EntryChange {
    /// An entry was added or replaced.
    Put {
        kind: ListKind,
        entry: ListEntry,
        origin: String,
    },
    /// An entry was removed; `expired` tells an expiry from a manual removal.
    Remove {
        kind: ListKind,
        cidr: IpNet,
        scope: Scope,
        expired: bool,
        origin: String,
    },
}

/// What a change subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// A change made by another store instance.
    Change(EntryChange),
    /// The subscription was lost and is back: changes in the gap may be missing (Pub/Sub does not
    /// queue), so the receiver should re-read `list_entries` and reconcile its kernel maps.
    Resubscribed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_round_trips_as_a_plain_string() {
        assert_eq!(serde_json::to_string(&Scope::Global).unwrap(), "\"global\"");
        let s: Scope = serde_json::from_str("\"vm-1\"").unwrap();
        assert_eq!(s, Scope::Sensor("vm-1".into()));
        assert!(serde_json::from_str::<Scope>("\"\"").is_err());
    }

    #[test]
    fn entry_ids_are_unambiguous_for_ipv6_and_colons() {
        let a = entry_id(
            &"2001:db8::/32".parse().unwrap(),
            &Scope::Sensor("a".into()),
        );
        let b = entry_id(
            &"db8::/32".parse().unwrap(),
            &Scope::Sensor("a:2001".into()),
        );
        assert_ne!(a, b);
    }

    #[test]
    fn expiry_index_never_rounds_an_expiry_earlier() {
        let t = Utc.timestamp_opt(1_700_000_000, 1_500_000).unwrap();
        assert_eq!(expiry_index_ms(t), 1_700_000_000_002);
        assert_eq!(now_index_ms(t), 1_700_000_000_001);
        let exact = Utc.timestamp_opt(1_700_000_000, 2_000_000).unwrap();
        assert_eq!(expiry_index_ms(exact), 1_700_000_000_002);
    }

    #[test]
    fn alert_json_matches_the_contract() {
        let json = r#"{"id":"a1","ts":"2024-05-01T12:00:00Z","sensor_id":"s1","class":"port_scan",
            "src_ip":"10.0.0.5","risk":80,"confidence":0.9,"mitre":"T1046","action":"alerted",
            "evidence":{"ports":120}}"#;
        let a: Alert = serde_json::from_str(json).unwrap();
        assert_eq!(a.count, 1);
        assert_eq!(a.dst_ip, None);
        let out = serde_json::to_value(&a).unwrap();
        assert!(
            out.get("dst_ip").is_none(),
            "optional fields are omitted, not null"
        );
        assert_eq!(out["ts"], "2024-05-01T12:00:00Z");
    }

    #[test]
    fn validation_rejects_host_bits_and_reserved_scope() {
        let mut e = ListEntry::new("10.0.0.1/8".parse().unwrap(), Scope::Global);
        let err = validate_entries(std::slice::from_ref(&e)).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
        e.cidr = "10.0.0.0/8".parse().unwrap();
        e.scope = Scope::Sensor("global".into());
        assert!(validate_entries(&[e]).is_err());
    }
}

//! Incoming host events (agents' JSON, local sshd lines) turned into [`HostEventRecord`]s, with a
//! fingerprint that makes a retried post recognisable.
//!
//! Each item is checked field by field, so that one bad item is rejected with a reason naming its
//! field while the good items of the same batch are kept. Accepted `event_type`s (case-insensitive;
//! `-` and spaces count as `_`):
//!
//! | normalised | aliases | service | counts as |
//! |---|---|---|---|
//! | `windows_4625` | `4625`, `win_4625`, `event_4625`, `windows_logon_failure` | windows | failure |
//! | `windows_4624` | `4624`, `win_4624`, `event_4624`, `windows_logon_success` | windows | success |
//! | `ssh_failed` | `ssh_failure`, `ssh_failed_password`, `failed_password` | ssh | failure |
//! | `ssh_invalid_user` | `invalid_user` | ssh | failure |
//! | `ssh_accepted` | `ssh_success`, `accepted_password`, `accepted` | ssh | success |
//! | `rdp_failed` | `rdp_failure` | rdp | failure |
//! | `login_failed` | `login_failure`, `auth_failed`, `failed_login` | login | failure |
//! | `login_success` | `login_accepted`, `auth_success` | login | success |

use std::net::IpAddr;

use chrono::{DateTime, TimeZone as _, Utc};
use netguard_store::HostEventRecord;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Longest username kept (longer ones are refused: no real account name is this long).
pub const MAX_USERNAME: usize = 256;
/// Longest `raw` kept; longer ones are cut (it is evidence, not data).
pub const MAX_RAW: usize = 4096;
/// Events stamped further in the future than this are refused (a wrong clock or unit).
pub const MAX_FUTURE_SKEW: chrono::Duration = chrono::Duration::hours(1);

/// One accepted event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventType {
    pub name: &'static str,
    pub service: &'static str,
    pub failure: bool,
}

const TYPES: &[(EventType, &[&str])] = &[
    (
        EventType {
            name: "windows_4625",
            service: "windows",
            failure: true,
        },
        &["4625", "win_4625", "event_4625", "windows_logon_failure"],
    ),
    (
        EventType {
            name: "windows_4624",
            service: "windows",
            failure: false,
        },
        &["4624", "win_4624", "event_4624", "windows_logon_success"],
    ),
    (
        EventType {
            name: "ssh_failed",
            service: "ssh",
            failure: true,
        },
        &["ssh_failure", "ssh_failed_password", "failed_password"],
    ),
    (
        EventType {
            name: "ssh_invalid_user",
            service: "ssh",
            failure: true,
        },
        &["invalid_user"],
    ),
    (
        EventType {
            name: "ssh_accepted",
            service: "ssh",
            failure: false,
        },
        &["ssh_success", "accepted_password", "accepted"],
    ),
    (
        EventType {
            name: "rdp_failed",
            service: "rdp",
            failure: true,
        },
        &["rdp_failure"],
    ),
    (
        EventType {
            name: "login_failed",
            service: "login",
            failure: true,
        },
        &["login_failure", "auth_failed", "failed_login"],
    ),
    (
        EventType {
            name: "login_success",
            service: "login",
            failure: false,
        },
        &["login_accepted", "auth_success"],
    ),
];

/// The normalised type of `s`, or `None` if unknown.
pub fn event_type(s: &str) -> Option<EventType> {
    let key: String = s
        .trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    TYPES
        .iter()
        .find(|(t, aliases)| t.name == key || aliases.contains(&key.as_str()))
        .map(|(t, _)| *t)
}

/// The normalised names, for error messages and the OpenAPI description.
pub fn type_names() -> Vec<&'static str> {
    TYPES.iter().map(|(t, _)| t.name).collect()
}

/// Why an item was refused: the field and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub field: &'static str,
    pub reason: String,
}

impl Rejection {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Rejection {
            field,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The RFC 3339 form (UTC, milliseconds, `Z`) that fingerprints and stored events use.
pub fn ts_text(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Truncates to whole milliseconds, the precision fingerprints use, so that the stored time and
/// the fingerprinted time are the same value.
pub fn to_millis(ts: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ts.timestamp_millis())
        .single()
        .unwrap_or(ts)
}

/// Lowercase hex SHA-256 over the compact JSON array `[ts, ip, username, port, vm, event_type]`:
/// `ts` as [`ts_text`], `ip` in canonical text (IPv4-mapped IPv6 as IPv4), `username` and `port` as
/// JSON `null` when absent, `event_type` by its canonical name (`4625` is `windows_4625`). A JSON
/// array keeps the fields apart whatever a username contains. The VM and the event type are part of
/// the event: without them one VM's agent could post another VM's coming failure first (or a
/// success with a failure's fields) and have the real event dropped as its duplicate.
pub fn fingerprint(
    ts: DateTime<Utc>,
    ip: IpAddr,
    user: Option<&str>,
    port: Option<u16>,
    vm: &str,
    event_type: &str,
) -> String {
    let key = serde_json::json!([
        ts_text(ts),
        ip.to_canonical().to_string(),
        user,
        port,
        vm,
        event_type
    ]);
    hex(&Sha256::digest(key.to_string().as_bytes()))
}

/// The `k`-th repeat (k ≥ 1) of an identical local log line: `sha256(base + "#k")`. See
/// [`super::local`] for why identical lines need telling apart.
pub fn repeat_fingerprint(base: &str, k: u32) -> String {
    if k == 0 {
        return base.to_owned();
    }
    hex(&Sha256::digest(format!("{base}#{k}").as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An event time: RFC 3339 text, or epoch seconds or milliseconds (number or digit string; values
/// from 10^11 up are milliseconds, which covers seconds until the year 5138).
pub fn parse_ts(v: &Value) -> Result<DateTime<Utc>, String> {
    const HINT: &str = "use RFC 3339 (\"2024-05-01T12:00:00Z\") or epoch seconds/milliseconds";
    let epoch = |x: f64| -> Result<DateTime<Utc>, String> {
        if !x.is_finite() || x < 0.0 {
            return Err(format!("{x} is not a valid epoch time; {HINT}"));
        }
        let ms = if x >= 1e11 { x } else { x * 1000.0 };
        if ms > 1e15 {
            return Err(format!(
                "{x} is too large for epoch seconds or milliseconds; {HINT}"
            ));
        }
        Utc.timestamp_millis_opt(ms as i64)
            .single()
            .ok_or_else(|| format!("{x} is out of range; {HINT}"))
    };
    let ts = match v {
        Value::Null => return Err(format!("is required; {HINT}")),
        Value::Number(n) => epoch(n.as_f64().unwrap_or(f64::NAN))?,
        Value::String(s) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                epoch(
                    s.parse::<f64>()
                        .map_err(|_| format!("`{s}` is not a time; {HINT}"))?,
                )?
            } else {
                DateTime::parse_from_rfc3339(s)
                    .map_err(|e| format!("`{s}` is not a time ({e}); {HINT}"))?
                    .with_timezone(&Utc)
            }
        }
        other => return Err(format!("{other} is not a time; {HINT}")),
    };
    if ts.timestamp() < 946_684_800 {
        return Err(format!("{} is before the year 2000; {HINT}", ts_text(ts)));
    }
    Ok(to_millis(ts))
}

fn parse_ip(v: &Value) -> Result<IpAddr, String> {
    let s = match v {
        Value::Null => return Err("is required: the address the login came from".into()),
        Value::String(s) => s.trim(),
        other => return Err(format!("{other} is not an IP address; send it as a string")),
    };
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IPv4 or IPv6 address"))?;
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        return Err(format!(
            "`{s}` is the unspecified address, which cannot be blocked"
        ));
    }
    Ok(ip)
}

fn parse_port(v: &Value) -> Result<Option<u16>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .map(Some)
            .ok_or_else(|| format!("{n} is not a port (0-65535)")),
        Value::String(s) if s.trim().is_empty() || s.trim() == "-" => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<u16>()
            .map(Some)
            .map_err(|_| format!("`{s}` is not a port (0-65535)")),
        other => Err(format!("{other} is not a port (0-65535)")),
    }
}

fn opt_string(v: &Value, field: &'static str) -> Result<Option<String>, Rejection> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(Rejection::new(field, format!("{other} is not a string"))),
    }
}

/// Who posts: where `source_vm_id` comes from when an item has none, and which VM an agent token
/// is bound to.
#[derive(Clone, Debug, Default)]
pub struct Poster {
    /// Used for items without `source_vm_id` (the agent token's VM, or its name).
    pub default_vm: Option<String>,
    /// An agent token bound to one VM may post only for it.
    pub bound_vm: Option<String>,
}

/// One item of a `POST /api/v1/events` body, checked and normalised.
pub fn normalize(
    item: &Value,
    poster: &Poster,
    received_at: DateTime<Utc>,
) -> Result<HostEventRecord, Rejection> {
    let Value::Object(obj) = item else {
        return Err(Rejection::new(
            "item",
            "is not a JSON object; send {\"src_ip\": ..., \"ts\": ..., \"event_type\": ...}",
        ));
    };
    let get = |k: &str| obj.get(k).unwrap_or(&Value::Null);
    let kind = match get("event_type") {
        Value::String(s) => event_type(s).ok_or_else(|| {
            Rejection::new(
                "event_type",
                format!(
                    "unknown type `{s}`; use one of {} (or an alias such as 4625)",
                    type_names().join(", ")
                ),
            )
        })?,
        Value::Null => {
            return Err(Rejection::new(
                "event_type",
                format!("is required; use one of {}", type_names().join(", ")),
            ));
        }
        other => {
            return Err(Rejection::new(
                "event_type",
                format!("{other} is not a string"),
            ));
        }
    };
    let src_ip = parse_ip(get("src_ip")).map_err(|e| Rejection::new("src_ip", e))?;
    let ts = parse_ts(get("ts")).map_err(|e| Rejection::new("ts", e))?;
    if ts - received_at > MAX_FUTURE_SKEW {
        return Err(Rejection::new(
            "ts",
            format!(
                "{} is more than 1 h in the future; check the agent's clock and time zone",
                ts_text(ts)
            ),
        ));
    }
    let username = opt_string(get("username"), "username")?;
    if username.as_ref().is_some_and(|u| u.len() > MAX_USERNAME) {
        return Err(Rejection::new(
            "username",
            format!("is longer than {MAX_USERNAME} bytes"),
        ));
    }
    let username = username.filter(|u| !u.is_empty());
    let src_port = parse_port(get("src_port")).map_err(|e| Rejection::new("src_port", e))?;
    // `raw` is accepted for the agent's convenience but only checked, not stored: it can be large
    // and the normalised fields carry what detection uses.
    opt_string(get("raw"), "raw")?;
    let vm = match opt_string(get("source_vm_id"), "source_vm_id")?.filter(|s| !s.trim().is_empty())
    {
        Some(vm) => vm.trim().to_owned(),
        None => poster.default_vm.clone().ok_or_else(|| {
            Rejection::new(
                "source_vm_id",
                "is required (this token is bound to no VM): name the VM that saw the login",
            )
        })?,
    };
    netguard_store::types::validate_sensor_id(&vm)
        .map_err(|e| Rejection::new("source_vm_id", e.to_string()))?;
    if let Some(bound) = &poster.bound_vm
        && *bound != vm
    {
        return Err(Rejection::new(
            "source_vm_id",
            format!("this agent token is bound to VM `{bound}` and may not post events for `{vm}`"),
        ));
    }
    Ok(HostEventRecord {
        fingerprint: fingerprint(ts, src_ip, username.as_deref(), src_port, &vm, kind.name),
        ts,
        received_at,
        src_ip,
        username,
        src_port,
        event_type: kind.name.to_owned(),
        service: kind.service.to_owned(),
        failure: kind.failure,
        source_vm_id: vm,
    })
}

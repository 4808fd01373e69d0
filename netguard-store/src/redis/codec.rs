//! How entries map to Redis hash fields, and which Redis errors mean "unreachable". Entries are
//! hashes of plain fields rather than one JSON blob so that an operator can read and fix them
//! with `redis-cli HGETALL`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use redis::{RedisError, ServerErrorKind};

use crate::types::ListEntry;

fn rfc3339(t: DateTime<Utc>) -> String {
    // Full precision, so an entry reads back equal to what was written.
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The hash fields of an entry; optional fields are left out rather than stored empty.
pub(super) fn entry_fields(entry: &ListEntry) -> Vec<(&'static str, String)> {
    let source = match serde_json::to_value(entry.source) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("EntrySource serialises as a string"),
    };
    let mut fields = vec![
        ("cidr", entry.cidr.to_string()),
        ("scope", entry.scope.to_string()),
        ("source", source),
        ("created_at", rfc3339(entry.created_at)),
    ];
    if let Some(reason) = &entry.reason {
        fields.push(("reason", reason.clone()));
    }
    if let Some(t) = entry.expires_at {
        fields.push(("expires_at", rfc3339(t)));
    }
    fields
}

/// Rebuilds an entry; `Ok(None)` for an empty hash (the entry is gone), `Err(detail)` if damaged.
pub(super) fn parse_entry(f: &HashMap<String, String>) -> Result<Option<ListEntry>, String> {
    if f.is_empty() {
        return Ok(None);
    }
    let get = |name: &str| f.get(name).ok_or(format!("field {name:?} is missing"));
    let time = |s: &String| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("bad time {s:?}: {e}"))
    };
    Ok(Some(ListEntry {
        cidr: get("cidr")?.parse().map_err(|e| format!("bad cidr: {e}"))?,
        scope: get("scope")?
            .parse()
            .map_err(|e| format!("bad scope: {e}"))?,
        reason: f.get("reason").cloned(),
        source: serde_json::from_value(serde_json::Value::String(get("source")?.clone()))
            .map_err(|e| format!("bad source: {e}"))?,
        created_at: time(get("created_at")?)?,
        expires_at: f.get("expires_at").map(time).transpose()?,
    }))
}

/// Errors that mean "Redis cannot serve us right now" rather than "Redis refused this command":
/// connection problems, timeouts, and servers still loading their data after a restart.
pub(super) fn is_unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Scope;

    #[test]
    fn entry_fields_round_trip() {
        let mut entry = ListEntry::new(
            "2001:db8::/32".parse().unwrap(),
            Scope::Sensor("s:1".into()),
        );
        entry.expires_at = Some(entry.created_at + chrono::Duration::nanoseconds(1_234_567));
        let fields = entry_fields(&entry)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(parse_entry(&fields).unwrap(), Some(entry));
        assert_eq!(parse_entry(&HashMap::new()).unwrap(), None);
    }
}

//! Validation of blocklist/allowlist requests, shared by REST, the CLI and automatic responses.
//!
//! Every problem names the field it is about, so the API can answer `{"error": ..., "field": ...}`
//! and a bulk request can say which items failed.

use std::{net::IpAddr, time::Duration};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_store::{EntrySource, ListEntry, Scope};
use serde::{Deserialize, Serialize};

/// Longest TTL accepted: anything longer is almost certainly a typo for "permanent".
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
pub const MAX_REASON_BYTES: usize = 1024;

/// One entry as clients send it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryRequest {
    /// An address or CIDR, IPv4 or IPv6. A bare address means /32 or /128.
    #[schema(example = "203.0.113.0/24")]
    pub cidr: String,
    /// How long the entry lasts, e.g. "90s", "4h", "7d". Absent means permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "4h")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// "global" (every sensor sharing the store) or a sensor id. Default: global.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Required to block 0.0.0.0/0 or ::/0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// A validation failure: which field, and what is wrong with it in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error: error.into(),
        }
    }
}

/// Parses "203.0.113.7", "203.0.113.0/24", "2001:db8::/32". Host bits must be clear: "10.0.0.1/24"
/// is refused rather than guessed, because it may mean /32 as easily as 10.0.0.0/24.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(
            "is empty: give an address or CIDR such as 203.0.113.7 or 203.0.113.0/24".into(),
        );
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(canonical(&IpNet::from(addr)));
    }
    let net: IpNet = s.parse().map_err(|_| {
        format!("`{s}` is not an IP address or CIDR (e.g. 203.0.113.0/24, 2001:db8::/48)")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set: use {} for the network, or {}/{} for the single host",
            net.trunc(),
            net.addr(),
            net.max_prefix_len()
        ));
    }
    Ok(canonical(&net))
}

/// IPv4-mapped IPv6 prefixes (`::ffff:a.b.c.d/96+n`) are the IPv4 prefix `a.b.c.d/n`, as the kernel
/// sees the packets: an entry kept in its IPv6 form would never match one.
pub fn canonical(net: &IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).map_or(*net, IpNet::V4),
            None => *net,
        },
        _ => *net,
    }
}

/// Parses "90s", "4h", "7d", "1h 30m" (humantime).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); use e.g. \"90s\", \"4h\", \"7d\""))?;
    if d.is_zero() {
        return Err("must be longer than zero; omit ttl for a permanent entry".into());
    }
    if d > MAX_TTL {
        return Err(format!(
            "`{s}` is over the 10-year maximum; omit ttl for a permanent entry"
        ));
    }
    Ok(d)
}

pub fn parse_scope(s: Option<&str>) -> Result<Scope, String> {
    match s.map(str::trim) {
        None | Some("") => Ok(Scope::Global),
        Some(s) => s
            .parse()
            .map_err(|e: netguard_store::StoreError| e.to_string()),
    }
}

/// Validates one request into a store entry. `prefix` names the item in a bulk request ("items[3].").
pub fn to_entry(
    req: &EntryRequest,
    source: EntrySource,
    now: DateTime<Utc>,
    prefix: &str,
) -> Result<ListEntry, FieldError> {
    let field = |f: &str| format!("{prefix}{f}");
    let cidr = parse_cidr(&req.cidr).map_err(|e| FieldError::new(field("cidr"), e))?;
    if cidr.prefix_len() == 0 && !req.force {
        return Err(FieldError::new(
            field("cidr"),
            format!("{cidr} covers every address; send \"force\": true if you really mean it"),
        ));
    }
    let ttl = req
        .ttl
        .as_deref()
        .map(parse_ttl)
        .transpose()
        .map_err(|e| FieldError::new(field("ttl"), e))?;
    let scope =
        parse_scope(req.scope.as_deref()).map_err(|e| FieldError::new(field("scope"), e))?;
    if let Some(r) = &req.reason
        && r.len() > MAX_REASON_BYTES
    {
        return Err(FieldError::new(
            field("reason"),
            format!("is {} bytes; the limit is {MAX_REASON_BYTES}", r.len()),
        ));
    }
    let expires_at =
        ttl.map(|d| now + chrono::Duration::from_std(d).expect("ttl bounded by MAX_TTL"));
    Ok(ListEntry {
        cidr,
        scope,
        reason: req.reason.clone().filter(|r| !r.is_empty()),
        source,
        created_at: now,
        expires_at,
    })
}

/// True when the two CIDRs share at least one address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cidr: &str) -> EntryRequest {
        EntryRequest {
            cidr: cidr.into(),
            ..Default::default()
        }
    }

    #[test]
    fn bare_addresses_are_hosts() {
        assert_eq!(
            parse_cidr("203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            parse_cidr(" 2001:db8::1 ").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_cidr("10.1.0.0/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
    }

    #[test]
    fn host_bits_are_refused_with_both_readings() {
        let e = parse_cidr("10.0.0.1/24").unwrap_err();
        assert!(
            e.contains("10.0.0.0/24") && e.contains("10.0.0.1/32"),
            "{e}"
        );
    }

    #[test]
    fn ipv4_mapped_entries_are_ipv4() {
        for (given, want) in [
            ("::ffff:203.0.113.7", "203.0.113.7/32"),
            ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("64:ff9b::203.0.113.7", "64:ff9b::cb00:7107/128"),
        ] {
            assert_eq!(parse_cidr(given).unwrap().to_string(), want, "{given}");
        }
        let r = to_entry(&req("::ffff:0:0/96"), EntrySource::Manual, Utc::now(), "");
        assert_eq!(
            r.unwrap_err().field,
            "cidr",
            "the mapped /0 needs force too"
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "::/129",
            "example.com",
            "1.2.3.4/-1",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("4h").unwrap(), Duration::from_secs(4 * 3600));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("20y").is_err());
    }

    #[test]
    fn whole_internet_needs_force() {
        let now = Utc::now();
        let e = to_entry(&req("0.0.0.0/0"), EntrySource::Manual, now, "").unwrap_err();
        assert_eq!(e.field, "cidr");
        assert!(to_entry(&req("::/0"), EntrySource::Manual, now, "").is_err());
        let forced = EntryRequest {
            force: true,
            ..req("::/0")
        };
        assert!(to_entry(&forced, EntrySource::Manual, now, "").is_ok());
    }

    #[test]
    fn entry_fields_and_item_prefix() {
        let now = Utc::now();
        let r = EntryRequest {
            cidr: "198.51.100.0/24".into(),
            ttl: Some("90s".into()),
            reason: Some("scanner".into()),
            scope: Some("vm-7".into()),
            force: false,
        };
        let e = to_entry(&r, EntrySource::Manual, now, "").unwrap();
        assert_eq!(e.expires_at, Some(now + chrono::Duration::seconds(90)));
        assert_eq!(e.scope, Scope::Sensor("vm-7".into()));
        let bad = EntryRequest {
            ttl: Some("x".into()),
            ..r
        };
        let err = to_entry(&bad, EntrySource::Manual, now, "items[3].").unwrap_err();
        assert_eq!(err.field, "items[3].ttl");
    }

    #[test]
    fn overlap_is_symmetric() {
        let a: IpNet = "10.0.0.0/8".parse().unwrap();
        let b: IpNet = "10.1.2.0/24".parse().unwrap();
        let c: IpNet = "11.0.0.0/8".parse().unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
    }
}

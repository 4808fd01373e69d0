//! GeoIP lookups for `GET /api/v1/geo-attacks`, from a MaxMind DB file the user supplies
//! (`netguard run --geoip-db PATH`, or `geoip_db` under `[api]` in the config file). NetGuard ships no
//! database: GeoLite2 needs a MaxMind account and licence, so the operator downloads
//! GeoLite2-City.mmdb or GeoLite2-Country.mmdb (or a commercial GeoIP2 file) and points the daemon at
//! it.
//!
//! The file is read into memory once at start-up and checked there, so a wrong path or a file that is
//! not a MaxMind DB stops the daemon with a message instead of failing every request later. Lookups
//! never fail: addresses that are not globally routable (private, loopback, link-local, CGNAT, ULA,
//! multicast ...) are not looked up, and they, addresses missing from the database and records the
//! database cannot decode all come back as [`Location::unknown`].

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Database types that carry no country, so `/geo-attacks` would answer "unknown" for everything.
const NO_COUNTRY_TYPES: [&str; 5] = ["ASN", "ISP", "Connection-Type", "Domain", "Anonymous-IP"];

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error(
        "cannot use the GeoIP database {path} (--geoip-db): {detail}. Give the path of a MaxMind \
         GeoLite2-City or GeoLite2-Country .mmdb file (download it from your MaxMind account), or \
         start without --geoip-db"
    )]
    Open { path: String, detail: String },
}

/// Where an address is, as far as the database knows. `None` fields are unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// ISO 3166-1 alpha-2 code, e.g. "DE".
    pub country_code: Option<String>,
    /// English country name, e.g. "Germany".
    pub country: Option<String>,
    /// English city name (City databases only).
    pub city: Option<String>,
}

impl Location {
    /// Nothing known (private addresses, addresses missing from the database).
    pub fn unknown() -> Self {
        Self::default()
    }
}

/// An open MaxMind DB.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
    path: PathBuf,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("database_type", &self.database_type())
            .finish()
    }
}

/// The parts of a GeoIP2/GeoLite2 Country or City record that NetGuard uses; every other field of
/// the record is skipped without being decoded.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    country: Option<Place>,
    /// Where the network is registered; used when `country` is absent (e.g. anycast networks).
    #[serde(default)]
    registered_country: Option<Place>,
    #[serde(default)]
    city: Option<Place>,
}

#[derive(Deserialize)]
struct Place {
    #[serde(default)]
    iso_code: Option<String>,
    #[serde(default)]
    names: Option<BTreeMap<String, String>>,
}

impl Place {
    fn english_name(&self) -> Option<String> {
        self.names.as_ref().and_then(|n| n.get("en")).cloned()
    }
}

impl GeoDb {
    /// Reads and checks the database: it must be a MaxMind DB whose type can carry a country.
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let fail = |detail: String| GeoError::Open {
            path: path.display().to_string(),
            detail,
        };
        if path.is_dir() {
            return Err(fail("it is a directory, not a file".into()));
        }
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| match e {
            maxminddb::MaxMindDbError::Io(io) => fail(io.to_string()),
            other => fail(format!("it is not a valid MaxMind DB file ({other})")),
        })?;
        let kind = reader.metadata().database_type.clone();
        if let Some(t) = NO_COUNTRY_TYPES.iter().find(|t| kind.contains(**t)) {
            return Err(fail(format!(
                "it is a {kind} database ({t} data, no countries)"
            )));
        }
        Ok(Self {
            reader,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata's `database_type`, e.g. "GeoLite2-City".
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built (Unix seconds).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Where `ip` is. Never fails: see the module docs for what comes back as unknown.
    pub fn lookup(&self, ip: IpAddr) -> Location {
        let ip = canonical(ip);
        if !is_global(ip) {
            return Location::unknown();
        }
        let record = match self.reader.lookup(ip).and_then(|r| r.decode::<Record>()) {
            Ok(Some(r)) => r,
            Ok(None) => return Location::unknown(),
            Err(e) => {
                log::debug!("GeoIP record for {ip} not decodable: {e}");
                return Location::unknown();
            }
        };
        let country = record
            .country
            .filter(|c| c.iso_code.is_some())
            .or(record.registered_country);
        Location {
            country_code: country.as_ref().and_then(|c| c.iso_code.clone()),
            country: country.as_ref().and_then(Place::english_name),
            city: record.city.as_ref().and_then(Place::english_name),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether an address can have a location: not private, loopback, link-local, shared (CGNAT),
/// unspecified, broadcast, multicast, or IPv6 unique-local.
pub fn is_global(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => is_global_v4(a),
        IpAddr::V6(a) => is_global_v6(a),
    }
}

fn is_global_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, ..] = a.octets();
    let shared = o0 == 100 && (64..128).contains(&o1);
    !(a.is_private()
        || a.is_loopback()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || shared
        || o0 == 0)
}

fn is_global_v6(a: Ipv6Addr) -> bool {
    let first = a.segments()[0];
    let unique_local = first & 0xfe00 == 0xfc00;
    let link_local = first & 0xffc0 == 0xfe80;
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || unique_local || link_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_global_addresses() {
        for s in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_global(s.parse().unwrap()), "{s}");
        }
        for s in [
            "81.2.69.160",
            "100.128.0.1",
            "2001:4860::1",
            "::ffff:81.2.69.1",
        ] {
            assert!(is_global(s.parse().unwrap()), "{s}");
        }
    }

    #[test]
    fn missing_and_invalid_files_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = GeoDb::open(&dir.path().join("nope.mmdb"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.mmdb") && e.contains("GeoLite2-City"),
            "{e}"
        );
        let junk = dir.path().join("junk.mmdb");
        std::fs::write(&junk, b"not a database").unwrap();
        let e = GeoDb::open(&junk).unwrap_err().to_string();
        assert!(e.contains("not a valid MaxMind DB"), "{e}");
        let e = GeoDb::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
    }
}

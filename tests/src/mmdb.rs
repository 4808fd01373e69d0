//! A small MaxMind DB writer, written from the format specification (MaxMind DB File Format 2.0), so
//! that the GeoIP tests build their own tiny GeoLite2-Country/City-like databases instead of needing a
//! licensed download.
//!
//! A file is three sections:
//! 1. the search tree: `node_count` nodes of two records each (bit 0 and bit 1 of the address, most
//!    significant bit first), each record `record_size` bits (24, 28 or 32). A record below
//!    `node_count` is the next node; equal to `node_count` means "no data"; above it, it points into
//!    the data section at `record - node_count - 16`. An IPv6 database keeps IPv4 addresses under
//!    `::a.b.c.d` (96 zero bits, then the IPv4 bits), which is where readers look for them;
//! 2. 16 zero bytes, then the data section: typed values, each a control byte (type in the top three
//!    bits, size in the low five, with 1-3 extra size bytes for sizes of 29 and more, and a second type
//!    byte for the extended types 8 and up);
//! 3. the marker `\xAB\xCD\xEFMaxMind.com` followed by the metadata map.
//!
//! Inserting networks that overlap keeps the more specific one, whatever the order: a broader network
//! inserted later fills only the addresses that nothing more specific covers.

use std::{collections::HashMap, net::IpAddr, path::Path};

use ipnet::IpNet;

/// The metadata marker that ends the data section.
pub const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

/// A data-section value (the subset of the format's types these tests need).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Double(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    /// Keys in the order given.
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Str(s.to_owned())
    }

    pub fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
}

/// `{"iso_code": ISO, "names": {"en": NAME}}`, the shape of `country` in GeoIP2 records.
pub fn place(iso_code: Option<&str>, name_en: &str) -> Value {
    let mut pairs = Vec::new();
    if let Some(iso) = iso_code {
        pairs.push(("iso_code", Value::str(iso)));
    }
    pairs.push(("names", Value::map([("en", Value::str(name_en))])));
    Value::map(pairs)
}

/// A GeoLite2-Country-like record.
pub fn country_record(iso_code: &str, name_en: &str) -> Value {
    Value::map([
        ("continent", Value::map([("code", Value::str("EU"))])),
        ("country", place(Some(iso_code), name_en)),
        ("registered_country", place(Some(iso_code), name_en)),
    ])
}

/// A GeoLite2-City-like record: the country record plus `city.names.en`.
pub fn city_record(iso_code: &str, country_en: &str, city_en: &str) -> Value {
    let Value::Map(mut pairs) = country_record(iso_code, country_en) else {
        unreachable!("country_record is a map")
    };
    pairs.push(("city".into(), place(None, city_en)));
    Value::Map(pairs)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds a database in memory; [`Writer::build`] gives the file's bytes.
#[derive(Clone, Debug)]
pub struct Writer {
    database_type: String,
    ip_version: u16,
    record_size: Option<u16>,
    build_epoch: u64,
    description: String,
    /// Node 0 is the root.
    nodes: Vec<[Slot; 2]>,
    /// Each inserted value with the prefix length (in the tree) of its network.
    values: Vec<(Value, u8)>,
}

impl Writer {
    /// An empty database of `ip_version` 4 or 6.
    pub fn new(database_type: &str, ip_version: u16) -> Self {
        assert!(ip_version == 4 || ip_version == 6, "ip_version is 4 or 6");
        Writer {
            database_type: database_type.to_owned(),
            ip_version,
            record_size: None,
            build_epoch: 1_700_000_000,
            description: format!("NetGuard test {database_type}"),
            nodes: vec![[Slot::Empty; 2]],
            values: Vec::new(),
        }
    }

    /// Forces the record size (24, 28 or 32 bits); by default the smallest that fits.
    pub fn record_size(mut self, bits: u16) -> Self {
        assert!([24, 28, 32].contains(&bits), "record size is 24, 28 or 32");
        self.record_size = Some(bits);
        self
    }

    pub fn build_epoch(mut self, epoch: u64) -> Self {
        self.build_epoch = epoch;
        self
    }

    /// The bits of `net` in this tree, most significant first, and the prefix length in the tree.
    fn path(&self, net: &IpNet) -> (u128, u8) {
        let net = net.trunc();
        match (net, self.ip_version) {
            (IpNet::V4(n), 4) => ((u32::from(n.addr()) as u128) << 96, n.prefix_len()),
            // IPv4 in an IPv6 tree lives under ::a.b.c.d/96.
            (IpNet::V4(n), _) => (u32::from(n.addr()) as u128, 96 + n.prefix_len()),
            (IpNet::V6(n), 6) => (u128::from(n.addr()), n.prefix_len()),
            (IpNet::V6(n), _) => panic!("{n} does not fit an IPv4 database"),
        }
    }

    /// Maps `net` to `value`; a more specific network always wins over a broader one.
    pub fn insert(&mut self, net: IpNet, value: Value) -> &mut Self {
        let (bits, prefix) = self.path(&net);
        // The top bit of an IPv4 tree's address is bit 31 of the u32, shifted to bit 127 above.
        let bit = |depth: u8| ((bits >> (127 - depth as u32)) & 1) as usize;
        self.values.push((value, prefix));
        let data = self.values.len() - 1;
        if prefix == 0 {
            self.fill(0, data);
            return self;
        }
        let mut cur = 0;
        for depth in 0..prefix {
            let b = bit(depth);
            let slot = self.nodes[cur][b];
            if depth == prefix - 1 {
                match slot {
                    // Something more specific is already inside: fill only around it.
                    Slot::Node(n) => self.fill(n, data),
                    _ => self.nodes[cur][b] = Slot::Data(data),
                }
                break;
            }
            cur = match slot {
                Slot::Node(n) => n,
                Slot::Empty | Slot::Data(_) => {
                    // A broader network's data is pushed down to both halves.
                    self.nodes.push([slot; 2]);
                    let n = self.nodes.len() - 1;
                    self.nodes[cur][b] = Slot::Node(n);
                    n
                }
            };
        }
        self
    }

    /// Gives every record under `node` the new network's data, except records of more specific
    /// networks: empty records, and records of broader networks that were pushed down to here.
    fn fill(&mut self, node: usize, data: usize) {
        let prefix = self.values[data].1;
        let mut stack = vec![node];
        while let Some(n) = stack.pop() {
            for b in 0..2 {
                match self.nodes[n][b] {
                    Slot::Node(child) => stack.push(child),
                    Slot::Data(d) if self.values[d].1 > prefix => {}
                    Slot::Empty | Slot::Data(_) => self.nodes[n][b] = Slot::Data(data),
                }
            }
        }
    }

    /// The database file.
    pub fn build(&self) -> Vec<u8> {
        // Data section: each distinct value once.
        let mut data = Vec::new();
        let mut offsets = Vec::with_capacity(self.values.len());
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        for (v, _) in &self.values {
            let mut enc = Vec::new();
            encode(v, &mut enc);
            let off = *seen.entry(enc.clone()).or_insert_with(|| {
                data.extend_from_slice(&enc);
                data.len() - enc.len()
            });
            offsets.push(off);
        }
        let node_count = self.nodes.len();
        let record = |s: Slot| -> u64 {
            match s {
                Slot::Empty => node_count as u64,
                Slot::Node(n) => n as u64,
                Slot::Data(d) => (node_count + 16 + offsets[d]) as u64,
            }
        };
        let largest = node_count as u64 + 16 + data.len() as u64;
        let record_size = self.record_size.unwrap_or(if largest < 1 << 24 {
            24
        } else if largest < 1 << 28 {
            28
        } else {
            32
        });
        assert!(
            largest < 1u64 << record_size,
            "{largest} does not fit {record_size}-bit records"
        );
        let mut out = Vec::with_capacity(node_count * record_size as usize / 4 + 16 + data.len());
        for node in &self.nodes {
            let (l, r) = (record(node[0]), record(node[1]));
            match record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                28 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    // The middle byte: the left record's top nibble, then the right record's.
                    out.push((((l >> 24) & 0x0f) << 4 | ((r >> 24) & 0x0f)) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                _ => {
                    out.extend_from_slice(&(l as u32).to_be_bytes());
                    out.extend_from_slice(&(r as u32).to_be_bytes());
                }
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(METADATA_MARKER);
        let metadata = Value::map([
            ("node_count", Value::U32(node_count as u32)),
            ("record_size", Value::U16(record_size)),
            ("ip_version", Value::U16(self.ip_version)),
            ("database_type", Value::str(&self.database_type)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            (
                "description",
                Value::map([("en", Value::str(&self.description))]),
            ),
        ]);
        encode(&metadata, &mut out);
        out
    }

    /// Writes the database to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.build())
    }

    /// Nodes in the search tree.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// Types of the data section (1-7 in the control byte, 8 and up extended).
const T_STRING: u8 = 2;
const T_DOUBLE: u8 = 3;
const T_UINT16: u8 = 5;
const T_UINT32: u8 = 6;
const T_MAP: u8 = 7;
const T_UINT64: u8 = 9;
const T_ARRAY: u8 = 11;
const T_BOOLEAN: u8 = 14;

/// A control byte (plus extended type byte and size bytes) for `ty` and `size`.
fn control(ty: u8, size: usize, out: &mut Vec<u8>) {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        let s = size - 285;
        (30, vec![(s >> 8) as u8, s as u8])
    } else {
        let s = size - 65_821;
        assert!(
            s < 1 << 24,
            "value of {size} bytes is over the format's limit"
        );
        (31, vec![(s >> 16) as u8, (s >> 8) as u8, s as u8])
    };
    if ty <= 7 {
        out.push(ty << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(ty - 7);
    }
    out.extend_from_slice(&extra);
}

/// Big-endian without leading zero bytes (zero is no bytes), as the format stores unsigned ints.
fn uint(ty: u8, v: u64, out: &mut Vec<u8>) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(ty, 8 - skip, out);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => {
            control(T_STRING, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Double(d) => {
            control(T_DOUBLE, 8, out);
            out.extend_from_slice(&d.to_be_bytes());
        }
        Value::U16(n) => uint(T_UINT16, u64::from(*n), out),
        Value::U32(n) => uint(T_UINT32, u64::from(*n), out),
        Value::U64(n) => uint(T_UINT64, *n, out),
        // A boolean's value is its size; it has no payload.
        Value::Bool(b) => control(T_BOOLEAN, usize::from(*b), out),
        Value::Map(pairs) => {
            control(T_MAP, pairs.len(), out);
            for (k, v) in pairs {
                encode(&Value::Str(k.clone()), out);
                encode(v, out);
            }
        }
        Value::Array(items) => {
            control(T_ARRAY, items.len(), out);
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// Parses an address for tests' convenience.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use maxminddb::{Reader, WithinOptions, geoip2};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn sample(record_size: Option<u16>) -> Vec<u8> {
        let mut w = Writer::new("GeoLite2-City", 6).build_epoch(1_714_521_600);
        if let Some(bits) = record_size {
            w = w.record_size(bits);
        }
        w.insert(
            net("81.2.69.0/24"),
            city_record("GB", "United Kingdom", "London"),
        )
        // Broader, inserted after the more specific network above: it must not override it.
        .insert(net("81.2.0.0/16"), country_record("GB", "United Kingdom"))
        .insert(net("89.160.20.0/24"), country_record("SE", "Sweden"))
        .insert(net("2a02:d8c0::/29"), country_record("DE", "Germany"))
        // More specific, inserted after the broader one.
        .insert(
            net("2a02:d8c0:1::/48"),
            city_record("DE", "Germany", "Berlin"),
        )
        .insert(net("203.0.113.0/25"), country_record("JP", "Japan"))
        // Broad, then most specific, then in between: each address gets its most specific.
        .insert(net("5.0.0.0/8"), country_record("FR", "France"))
        .insert(net("5.1.2.0/24"), country_record("IT", "Italy"))
        .insert(net("5.1.0.0/16"), country_record("ES", "Spain"));
        w.build()
    }

    fn country_of(r: &Reader<Vec<u8>>, a: &str) -> Option<String> {
        r.lookup(ip(a))
            .unwrap()
            .decode::<geoip2::Country>()
            .unwrap()
            .and_then(|c| c.country.iso_code.map(str::to_owned))
    }

    fn city_of(r: &Reader<Vec<u8>>, a: &str) -> Option<String> {
        r.lookup(ip(a))
            .unwrap()
            .decode::<geoip2::City>()
            .unwrap()
            .and_then(|c| c.city.names.english.map(str::to_owned))
    }

    #[test]
    fn maxminddb_reads_back_every_record_size() {
        for bits in [None, Some(24), Some(28), Some(32)] {
            let r = Reader::from_source(sample(bits)).unwrap();
            r.verify()
                .unwrap_or_else(|e| panic!("{bits:?}: verify: {e}"));
            let m = r.metadata();
            assert_eq!(m.record_size, bits.unwrap_or(24));
            assert_eq!((m.ip_version, m.binary_format_major_version), (6, 2));
            assert_eq!(m.database_type, "GeoLite2-City");
            assert_eq!(m.build_epoch, 1_714_521_600);
            assert_eq!(m.languages, ["en"]);
            assert_eq!(
                m.description.get("en").map(String::as_str),
                Some("NetGuard test GeoLite2-City")
            );
            assert_eq!(country_of(&r, "81.2.69.160").as_deref(), Some("GB"));
            assert_eq!(city_of(&r, "81.2.69.160").as_deref(), Some("London"));
            assert_eq!(country_of(&r, "81.2.1.1").as_deref(), Some("GB"));
            assert_eq!(city_of(&r, "81.2.1.1"), None, "the /16 has no city");
            assert_eq!(country_of(&r, "89.160.20.128").as_deref(), Some("SE"));
            assert_eq!(country_of(&r, "2a02:d8c0:7::1").as_deref(), Some("DE"));
            assert_eq!(city_of(&r, "2a02:d8c0:1::5").as_deref(), Some("Berlin"));
            assert_eq!(country_of(&r, "203.0.113.127").as_deref(), Some("JP"));
            assert_eq!(country_of(&r, "5.1.2.3").as_deref(), Some("IT"));
            assert_eq!(country_of(&r, "5.1.9.9").as_deref(), Some("ES"));
            assert_eq!(country_of(&r, "5.9.9.9").as_deref(), Some("FR"));
            // Just outside each network: nothing.
            for a in [
                "203.0.113.128",
                "89.160.21.0",
                "81.3.0.0",
                "2a02:d8c8::",
                "8.8.8.8",
            ] {
                assert!(!r.lookup(ip(a)).unwrap().has_data(), "{a}");
            }
            // The network a lookup reports is the inserted one.
            assert_eq!(
                r.lookup(ip("89.160.20.9"))
                    .unwrap()
                    .network()
                    .unwrap()
                    .to_string(),
                "89.160.20.0/24"
            );
            let names = r
                .lookup(ip("89.160.20.9"))
                .unwrap()
                .decode::<geoip2::Country>()
                .unwrap()
                .unwrap()
                .country
                .names;
            assert_eq!(names.english, Some("Sweden"));
        }
    }

    #[test]
    fn networks_iterate_as_inserted() {
        let mut w = Writer::new("GeoLite2-Country", 6);
        w.insert(net("198.51.100.0/24"), country_record("FR", "France"))
            .insert(net("2001:db8::/32"), country_record("NL", "Netherlands"));
        let r = Reader::from_source(w.build()).unwrap();
        let mut found = BTreeMap::new();
        for item in r.networks(WithinOptions::default()).unwrap() {
            let item = item.unwrap();
            let c: geoip2::Country = item.decode().unwrap().unwrap();
            found.insert(
                item.network().unwrap().to_string(),
                c.country.iso_code.unwrap().to_owned(),
            );
        }
        let want: BTreeMap<String, String> = [("198.51.100.0/24", "FR"), ("2001:db8::/32", "NL")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        assert_eq!(found, want);
        // The identical records of one country are stored once.
        let one = w.build().len();
        w.insert(net("198.51.101.0/24"), country_record("FR", "France"));
        let two = w.build().len();
        assert!(
            two - one < 20,
            "a repeated record was stored twice ({one} -> {two} bytes)"
        );
    }

    #[test]
    fn ipv4_database_and_every_size_encoding() {
        // Strings of 28, 29+, 285+ and 65,821+ bytes exercise all four size encodings, and the
        // remaining types each appear once.
        let long = |n: usize| "x".repeat(n);
        let value = Value::map([
            ("s28", Value::Str(long(28))),
            ("s29", Value::Str(long(29))),
            ("s300", Value::Str(long(300))),
            ("s70000", Value::Str(long(70_000))),
            ("d", Value::Double(1.5)),
            ("b", Value::Bool(true)),
            ("f", Value::Bool(false)),
            ("zero", Value::U32(0)),
            ("big", Value::U64(u64::MAX)),
            ("list", Value::Array(vec![Value::U16(7), Value::str("a")])),
        ]);
        let mut w = Writer::new("Test-IPv4", 4).record_size(28);
        w.insert(net("10.0.0.0/8"), value)
            .insert(net("0.0.0.0/0"), country_record("ZZ", "Elsewhere"));
        let r = Reader::from_source(w.build()).unwrap();
        r.verify().unwrap();
        assert_eq!(r.metadata().ip_version, 4);
        let v: serde_json::Value = r.lookup(ip("10.9.9.9")).unwrap().decode().unwrap().unwrap();
        assert_eq!(v["s28"].as_str().unwrap().len(), 28);
        assert_eq!(v["s29"].as_str().unwrap().len(), 29);
        assert_eq!(v["s300"].as_str().unwrap().len(), 300);
        assert_eq!(v["s70000"].as_str().unwrap().len(), 70_000);
        assert_eq!(v["d"], 1.5);
        assert_eq!(
            (v["b"].as_bool(), v["f"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(v["zero"], 0);
        assert_eq!(v["big"], u64::MAX);
        assert_eq!(v["list"], serde_json::json!([7, "a"]));
        // The /0 inserted last covers everything else, not 10/8.
        assert_eq!(country_of(&r, "11.0.0.1").as_deref(), Some("ZZ"));
        assert_eq!(country_of(&r, "10.0.0.1"), None);
    }
}

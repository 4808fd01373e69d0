//! CIDR tables addressed by `IpNet`: the blocklist and the allowlist.
//!
//! Each table has an LPM trie per family. The blocklist also keeps host entries (/32, /128) in hash
//! maps, where a lookup costs the same with a million entries as with one. Each table publishes which
//! of its maps are non-empty in its flags array so the XDP program skips the empty ones.
//!
//! The kernel trie only answers longest-prefix questions, so "is exactly this CIDR an entry?" cannot be
//! asked of it. The set of entries we wrote is kept here as well: it answers exact lookups, gives O(1)
//! sizes for metrics, and refuses an insert that would overflow a map before the kernel does halfway
//! through a batch.

use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use aya::{
    Pod,
    maps::{Array, HashMap, IterableMap as _, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use ipnet::IpNet;
use netguard_common::TableFlag;

use super::{DatapathError, batch};

/// Inserts larger than this go to the kernel in several batch calls, bounding the temporary buffers.
const BATCH_CHUNK: usize = 65_536;

/// The blocklist's extra layers: exact hosts in hash maps, and the /16 presence bitmap that lets
/// packets skip the IPv4 prefix trie.
pub struct HostLayer<V: Pod> {
    pub v4: HashMap<MapData, [u8; 4], V>,
    pub v6: HashMap<MapData, [u8; 16], V>,
    pub prefix16: Array<MapData, u64>,
}

/// Userspace side of `PREFIX16_V4`: how many IPv4 prefixes overlap each /16, and the bit words as last
/// written to the kernel.
struct Prefix16 {
    refs: Vec<u32>,
    words: Vec<u64>,
}

impl Prefix16 {
    fn new() -> Self {
        Self {
            refs: vec![0; 1 << 16],
            words: vec![0; netguard_common::PREFIX16_WORDS as usize],
        }
    }

    /// The /16 buckets an IPv4 prefix overlaps.
    fn buckets(net: &ipnet::Ipv4Net) -> std::ops::Range<usize> {
        let first = (u32::from(net.network()) >> 16) as usize;
        let len = net.prefix_len().min(16);
        first..first + (1usize << (16 - len))
    }
}

pub struct CidrTable<V: Pod + Default> {
    name: &'static str,
    v4: LpmTrie<MapData, [u8; 4], V>,
    v6: LpmTrie<MapData, [u8; 16], V>,
    hosts: Option<HostLayer<V>>,
    flags: Array<MapData, u32>,
    v4_max: u32,
    v6_max: u32,
    entries: HashSet<IpNet>,
    /// Entries per map, indexed by `TableFlag`.
    counts: [usize; 4],
    /// Present for the blocklist only.
    prefix16: Option<Prefix16>,
}

fn pod_bytes<V: Pod>(v: &V) -> &[u8] {
    // SAFETY: V is Pod: plain bytes with no padding invariants.
    unsafe { std::slice::from_raw_parts((v as *const V).cast::<u8>(), size_of::<V>()) }
}

fn map_err(
    op: &'static str,
    map: &'static str,
    detail: impl ToString,
) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map {
        op,
        map,
        detail: detail.to_string(),
        source: Box::new(source),
    }
}

fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl<V: Pod + Default> CidrTable<V> {
    pub fn new(
        name: &'static str,
        v4: LpmTrie<MapData, [u8; 4], V>,
        v6: LpmTrie<MapData, [u8; 16], V>,
        hosts: Option<HostLayer<V>>,
        flags: Array<MapData, u32>,
        v4_max: u32,
        v6_max: u32,
    ) -> Self {
        let prefix16 = hosts.as_ref().map(|_| Prefix16::new());
        Self {
            name,
            v4,
            v6,
            hosts,
            flags,
            v4_max,
            v6_max,
            prefix16,
            entries: HashSet::new(),
            counts: [0; 4],
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries held and the most allowed, per family: `[(v4 held, v4 max), (v6 held, v6 max)]`.
    pub fn fill(&self) -> [(usize, u32); 2] {
        let c = &self.counts;
        [(c[0] + c[1], self.v4_max), (c[2] + c[3], self.v6_max)]
    }

    /// The CIDRs this table holds (from the userspace index, which mirrors every write we made).
    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.entries.iter()
    }

    pub fn contains(&self, net: &IpNet) -> bool {
        self.entries.contains(&net.trunc())
    }

    /// Which map holds `net`.
    fn table_of(&self, net: &IpNet) -> TableFlag {
        let host = self.hosts.is_some() && net.prefix_len() == net.max_prefix_len();
        match (net, host) {
            (IpNet::V4(_), true) => TableFlag::HostV4,
            (IpNet::V4(_), false) => TableFlag::PrefixV4,
            (IpNet::V6(_), true) => TableFlag::HostV6,
            (IpNet::V6(_), false) => TableFlag::PrefixV6,
        }
    }

    fn fd(&self, t: TableFlag) -> RawFd {
        let map = match (t, &self.hosts) {
            (TableFlag::HostV4, Some(h)) => h.v4.map(),
            (TableFlag::HostV6, Some(h)) => h.v6.map(),
            (TableFlag::PrefixV4 | TableFlag::HostV4, _) => self.v4.map(),
            (TableFlag::PrefixV6 | TableFlag::HostV6, _) => self.v6.map(),
        };
        map.fd().as_fd().as_raw_fd()
    }

    fn set_flag(&mut self, t: TableFlag, on: bool) -> Result<(), DatapathError> {
        let name = self.name;
        self.flags
            .set(t as u32, on as u32, 0)
            .map_err(map_err("update", name, "table flags"))
    }

    /// Counts `nets` in or out of their /16 buckets and writes the bitmap words whose bits changed.
    fn adjust_prefix16(&mut self, nets: &[IpNet], add: bool) -> Result<(), DatapathError> {
        let (Some(p), Some(h)) = (self.prefix16.as_mut(), self.hosts.as_mut()) else {
            return Ok(());
        };
        let mut dirty = std::collections::BTreeSet::new();
        for net in nets {
            let IpNet::V4(n) = net else { continue };
            for b in Prefix16::buckets(n) {
                let r = &mut p.refs[b];
                let was = *r > 0;
                *r = if add { *r + 1 } else { r.saturating_sub(1) };
                if was != (*r > 0) {
                    p.words[b >> 6] ^= 1u64 << (b & 63);
                    dirty.insert(b >> 6);
                }
            }
        }
        for w in dirty {
            h.prefix16.set(w as u32, p.words[w], 0).map_err(map_err(
                "update",
                self.name,
                "prefix /16 bitmap",
            ))?;
        }
        Ok(())
    }

    /// Takes over what the kernel maps hold (pinned maps of an earlier run): the index, the counts,
    /// the /16 bitmap and the flags are rebuilt from the live entries, whose values (hit counters)
    /// are left alone. Returns how many entries were found.
    pub fn adopt(&mut self) -> Result<usize, DatapathError> {
        let live = self.list()?;
        self.entries.clear();
        self.counts = [0; 4];
        if self.prefix16.is_some() {
            self.prefix16 = Some(Prefix16::new());
        }
        let mut prefixes_v4 = Vec::new();
        for (net, _) in &live {
            let net = net.trunc();
            let t = self.table_of(&net);
            if self.entries.insert(net) {
                self.counts[t as usize] += 1;
                if t == TableFlag::PrefixV4 {
                    prefixes_v4.push(net);
                }
            }
        }
        self.adjust_prefix16(&prefixes_v4, true)?;
        // Words whose bits the kernel has but no entry needs (a crash between writes) are cleared.
        if let (Some(p), Some(h)) = (self.prefix16.as_ref(), self.hosts.as_mut()) {
            for (w, want) in p.words.iter().enumerate() {
                let have = h.prefix16.get(&(w as u32), 0).unwrap_or(!*want);
                if have != *want {
                    h.prefix16.set(w as u32, *want, 0).map_err(map_err(
                        "update",
                        self.name,
                        "prefix /16 bitmap",
                    ))?;
                }
            }
        }
        for t in [
            TableFlag::HostV4,
            TableFlag::PrefixV4,
            TableFlag::HostV6,
            TableFlag::PrefixV6,
        ] {
            let on = self.counts[t as usize] > 0;
            self.set_flag(t, on)?;
        }
        Ok(self.entries.len())
    }

    /// Fails, without touching anything, when inserting `nets` would overflow a map.
    pub fn check_capacity(&self, nets: &[IpNet]) -> Result<(), DatapathError> {
        let mut groups: [Vec<IpNet>; 4] = Default::default();
        let mut seen = HashSet::new();
        for net in nets {
            let net = net.trunc();
            if !self.entries.contains(&net) && seen.insert(net) {
                groups[self.table_of(&net) as usize].push(net);
            }
        }
        self.check_groups(&groups)
    }

    fn check_groups(&self, groups: &[Vec<IpNet>; 4]) -> Result<(), DatapathError> {
        let c = &self.counts;
        let (have4, have6) = (c[0] + c[1], c[2] + c[3]);
        let (add4, add6) = (
            groups[0].len() + groups[1].len(),
            groups[2].len() + groups[3].len(),
        );
        if have4 + add4 > self.v4_max as usize {
            return Err(self.full("v4", self.v4_max, have4, add4));
        }
        if have6 + add6 > self.v6_max as usize {
            return Err(self.full("v6", self.v6_max, have6, add6));
        }
        Ok(())
    }

    /// Inserts every CIDR (host bits cleared). Entries already present keep their hit counters. Either
    /// every new entry fits and is inserted, or nothing is (a full table is refused up front). Returns
    /// how many were new.
    pub fn insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError> {
        let mut groups: [Vec<IpNet>; 4] = Default::default();
        let mut seen = HashSet::new();
        for net in nets {
            let net = net.trunc();
            if !self.entries.contains(&net) && seen.insert(net) {
                groups[self.table_of(&net) as usize].push(net);
            }
        }
        self.check_groups(&groups)?;
        let value = V::default();
        let tables = [
            TableFlag::HostV4,
            TableFlag::PrefixV4,
            TableFlag::HostV6,
            TableFlag::PrefixV6,
        ];
        for (t, group) in tables.into_iter().zip(groups.iter()) {
            if group.is_empty() {
                continue;
            }
            // Raise the flag (and /16 bits) first: the datapath must never skip a table that already
            // holds entries.
            self.set_flag(t, true)?;
            if t == TableFlag::PrefixV4 {
                self.adjust_prefix16(group, true)?;
            }
            for chunk in group.chunks(BATCH_CHUNK) {
                let mut keys = Vec::with_capacity(chunk.len() * 20);
                for net in chunk {
                    if matches!(t, TableFlag::PrefixV4 | TableFlag::PrefixV6) {
                        keys.extend_from_slice(&(net.prefix_len() as u32).to_ne_bytes());
                    }
                    match net.network() {
                        IpAddr::V4(a) => keys.extend_from_slice(&a.octets()),
                        IpAddr::V6(a) => keys.extend_from_slice(&a.octets()),
                    }
                }
                self.write_batch(self.fd(t), &keys, chunk.len(), &value)?;
                self.entries.extend(chunk.iter().copied());
                self.counts[t as usize] += chunk.len();
            }
        }
        Ok(groups.iter().map(Vec::len).sum())
    }

    fn full(&self, family: &str, max: u32, have: usize, adding: usize) -> DatapathError {
        DatapathError::TableFull {
            table: self.name,
            family: family.to_string(),
            max,
            have,
            adding,
        }
    }

    /// One BPF_MAP_UPDATE_BATCH per chunk; element-wise updates where the kernel has no batch support
    /// for the map type.
    fn write_batch(
        &self,
        fd: RawFd,
        keys: &[u8],
        n: usize,
        value: &V,
    ) -> Result<(), DatapathError> {
        let values: Vec<u8> = std::iter::repeat_n(pod_bytes(value), n)
            .flatten()
            .copied()
            .collect();
        let key_size = keys.len() / n;
        let done = match batch::update_batch(fd, keys, &values, n as u32) {
            Ok(()) => return Ok(()),
            Err((_, e)) if batch::unsupported(&e) => 0,
            Err((done, source)) => {
                return Err(DatapathError::Syscall {
                    op: "BPF_MAP_UPDATE_BATCH",
                    map: self.name,
                    applied: done as usize,
                    source,
                });
            }
        };
        let value = pod_bytes(value);
        for (i, key) in keys.chunks(key_size).enumerate().skip(done) {
            batch::update_elem(fd, key, value).map_err(|source| DatapathError::Syscall {
                op: "BPF_MAP_UPDATE_ELEM",
                map: self.name,
                applied: i,
                source,
            })?;
        }
        Ok(())
    }

    /// Removes exactly this CIDR. Returns false (not an error) when it was not an entry, so deletes are
    /// idempotent.
    pub fn remove(&mut self, net: IpNet) -> Result<bool, DatapathError> {
        let net = net.trunc();
        let t = self.table_of(&net);
        let name = self.name;
        let res = match (net, t, self.hosts.as_mut()) {
            (IpNet::V4(n), TableFlag::HostV4, Some(h)) => h.v4.remove(&n.addr().octets()),
            (IpNet::V6(n), TableFlag::HostV6, Some(h)) => h.v6.remove(&n.addr().octets()),
            (IpNet::V4(n), ..) => self
                .v4
                .remove(&Key::new(n.prefix_len().into(), n.network().octets())),
            (IpNet::V6(n), ..) => self
                .v6
                .remove(&Key::new(n.prefix_len().into(), n.network().octets())),
        };
        let removed = match res {
            Ok(()) => true,
            Err(e) if not_found(&e) => false,
            Err(e) => return Err(map_err("remove", name, net)(e)),
        };
        if self.entries.remove(&net) {
            self.counts[t as usize] -= 1;
            if t == TableFlag::PrefixV4 {
                self.adjust_prefix16(&[net], false)?;
            }
            // Lower the flag only once the table is empty, after the removal.
            if self.counts[t as usize] == 0 {
                self.set_flag(t, false)?;
            }
        }
        Ok(removed)
    }

    /// The value of exactly this entry (its hit counters), or None when it is not an entry.
    pub fn get(&self, net: IpNet) -> Result<Option<V>, DatapathError> {
        let net = net.trunc();
        if !self.entries.contains(&net) {
            return Ok(None);
        }
        // The entry exists, so the longest prefix matching its own key is the entry itself.
        let res = match (net, self.table_of(&net), &self.hosts) {
            (IpNet::V4(n), TableFlag::HostV4, Some(h)) => h.v4.get(&n.addr().octets(), 0),
            (IpNet::V6(n), TableFlag::HostV6, Some(h)) => h.v6.get(&n.addr().octets(), 0),
            (IpNet::V4(n), ..) => self
                .v4
                .get(&Key::new(n.prefix_len().into(), n.network().octets()), 0),
            (IpNet::V6(n), ..) => self
                .v6
                .get(&Key::new(n.prefix_len().into(), n.network().octets()), 0),
        };
        match res {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(map_err("lookup", self.name, net)(e)),
        }
    }

    /// The entry that decides an address's verdict: its host entry, else the longest prefix holding it.
    pub fn lookup_addr(&self, addr: IpAddr) -> Result<Option<V>, DatapathError> {
        let host = match (addr, &self.hosts) {
            (IpAddr::V4(a), Some(h)) => Some(h.v4.get(&a.octets(), 0)),
            (IpAddr::V6(a), Some(h)) => Some(h.v6.get(&a.octets(), 0)),
            _ => None,
        };
        let res = match host {
            Some(Ok(v)) => return Ok(Some(v)),
            Some(Err(e)) if !not_found(&e) => return Err(map_err("lookup", self.name, addr)(e)),
            _ => match addr {
                IpAddr::V4(a) => self.v4.get(&Key::new(32, a.octets()), 0),
                IpAddr::V6(a) => self.v6.get(&Key::new(128, a.octets()), 0),
            },
        };
        match res {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(map_err("lookup", self.name, addr)(e)),
        }
    }

    /// Every entry with its value, read from the kernel maps (not from the userspace index), so it shows
    /// what is really enforced.
    pub fn list(&self) -> Result<Vec<(IpNet, V)>, DatapathError> {
        let name = self.name;
        let mut out = Vec::with_capacity(self.entries.len());
        if let Some(h) = &self.hosts {
            for item in h.v4.iter() {
                let (k, v) = item.map_err(map_err("iterate", name, "hosts v4"))?;
                out.push((IpNet::from(IpAddr::from(k)), v));
            }
            for item in h.v6.iter() {
                let (k, v) = item.map_err(map_err("iterate", name, "hosts v6"))?;
                out.push((IpNet::from(IpAddr::from(k)), v));
            }
        }
        for item in self.v4.iter() {
            let (k, v) = item.map_err(map_err("iterate", name, "prefixes v4"))?;
            let net = ipnet::Ipv4Net::new(k.data().into(), k.prefix_len() as u8)
                .expect("kernel prefix <= 32");
            out.push((IpNet::V4(net), v));
        }
        for item in self.v6.iter() {
            let (k, v) = item.map_err(map_err("iterate", name, "prefixes v6"))?;
            let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
                .expect("kernel prefix <= 128");
            out.push((IpNet::V6(net), v));
        }
        Ok(out)
    }
}

//! A pair of LPM tries (IPv4 and IPv6) addressed by `IpNet`: the shape of both the blocklist and the
//! allowlist.
//!
//! The kernel trie only answers longest-prefix questions, so "is exactly this CIDR an entry?" cannot be
//! asked of it. We keep the set of entries we wrote in userspace as well: it answers exact lookups, gives
//! O(1) sizes for metrics, and refuses an insert that would overflow the map before the kernel does
//! halfway through a batch.

use std::{
    collections::HashSet,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{IterableMap as _, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use ipnet::IpNet;

use super::{DatapathError, batch};

/// Inserts larger than this go to the kernel in several batch calls, bounding the temporary buffers.
const BATCH_CHUNK: usize = 65_536;

pub struct CidrTable<V: Pod + Default> {
    name: &'static str,
    v4: LpmTrie<MapData, [u8; 4], V>,
    v6: LpmTrie<MapData, [u8; 16], V>,
    v4_max: u32,
    v6_max: u32,
    entries: HashSet<IpNet>,
}

/// An LPM key exactly as the kernel expects it: `u32 prefixlen` followed by the address bytes.
fn key_bytes<const N: usize>(prefix: u8, addr: [u8; N], out: &mut Vec<u8>) {
    out.extend_from_slice(&(prefix as u32).to_ne_bytes());
    out.extend_from_slice(&addr);
}

fn pod_bytes<V: Pod>(v: &V) -> &[u8] {
    // SAFETY: V is Pod: plain bytes with no padding invariants.
    unsafe { std::slice::from_raw_parts((v as *const V).cast::<u8>(), size_of::<V>()) }
}

impl<V: Pod + Default> CidrTable<V> {
    pub fn new(
        name: &'static str,
        v4: LpmTrie<MapData, [u8; 4], V>,
        v6: LpmTrie<MapData, [u8; 16], V>,
        v4_max: u32,
        v6_max: u32,
    ) -> Self {
        Self {
            name,
            v4,
            v6,
            v4_max,
            v6_max,
            entries: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, net: &IpNet) -> bool {
        self.entries.contains(&net.trunc())
    }

    fn counts(&self) -> (usize, usize) {
        let v4 = self.entries.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
        (v4, self.entries.len() - v4)
    }

    /// Inserts every CIDR (host bits cleared). Existing entries keep their hit counters. Returns how
    /// many were new.
    pub fn insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError> {
        let mut new4 = Vec::new();
        let mut new6 = Vec::new();
        let mut seen = HashSet::new();
        for net in nets {
            let net = net.trunc();
            if self.entries.contains(&net) || !seen.insert(net) {
                continue;
            }
            match net {
                IpNet::V4(n) => new4.push(n),
                IpNet::V6(n) => new6.push(n),
            }
        }
        let (have4, have6) = self.counts();
        if have4 + new4.len() > self.v4_max as usize {
            return Err(self.full("v4", self.v4_max, have4, new4.len()));
        }
        if have6 + new6.len() > self.v6_max as usize {
            return Err(self.full("v6", self.v6_max, have6, new6.len()));
        }

        let value = V::default();
        for chunk in new4.chunks(BATCH_CHUNK) {
            let mut keys = Vec::with_capacity(chunk.len() * 8);
            for n in chunk {
                key_bytes(n.prefix_len(), n.network().octets(), &mut keys);
            }
            self.write_batch(true, &keys, chunk.len(), &value)?;
            self.entries.extend(chunk.iter().map(|n| IpNet::V4(*n)));
        }
        for chunk in new6.chunks(BATCH_CHUNK) {
            let mut keys = Vec::with_capacity(chunk.len() * 20);
            for n in chunk {
                key_bytes(n.prefix_len(), n.network().octets(), &mut keys);
            }
            self.write_batch(false, &keys, chunk.len(), &value)?;
            self.entries.extend(chunk.iter().map(|n| IpNet::V6(*n)));
        }
        Ok(new4.len() + new6.len())
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
    /// for LPM tries.
    fn write_batch(&mut self, v4: bool, keys: &[u8], n: usize, value: &V) -> Result<(), DatapathError> {
        let values: Vec<u8> = std::iter::repeat_n(pod_bytes(value), n).flatten().copied().collect();
        let key_size = keys.len() / n;
        let map = if v4 { self.v4.map() } else { self.v6.map() };
        let fd = map.fd().as_fd().as_raw_fd();
        let done = match batch::update_batch(fd, keys, &values, n as u32) {
            Ok(()) => return Ok(()),
            Err((_, e)) if batch::unsupported(&e) => 0,
            Err((done, e)) => {
                return Err(DatapathError::Syscall {
                    op: "BPF_MAP_UPDATE_BATCH",
                    map: self.name,
                    applied: done as usize,
                    source: e,
                });
            }
        };
        for (i, key) in keys.chunks(key_size).enumerate().skip(done) {
            let prefix = u32::from_ne_bytes(key[..4].try_into().expect("4-byte prefix"));
            let res = if v4 {
                let addr: [u8; 4] = key[4..].try_into().expect("v4 key");
                self.v4.insert(&Key::new(prefix, addr), value, 0)
            } else {
                let addr: [u8; 16] = key[4..].try_into().expect("v6 key");
                self.v6.insert(&Key::new(prefix, addr), value, 0)
            };
            res.map_err(|source| DatapathError::Map {
                op: "insert",
                map: self.name,
                detail: format!("after {i} of {n} elements"),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes exactly this CIDR. Returns false (not an error) when it was not an entry, so deletes are
    /// idempotent.
    pub fn remove(&mut self, net: IpNet) -> Result<bool, DatapathError> {
        let net = net.trunc();
        let res = match net {
            IpNet::V4(n) => self.v4.remove(&Key::new(n.prefix_len().into(), n.network().octets())),
            IpNet::V6(n) => self.v6.remove(&Key::new(n.prefix_len().into(), n.network().octets())),
        };
        match res {
            Ok(()) => {
                self.entries.remove(&net);
                Ok(true)
            }
            Err(MapError::KeyNotFound) => {
                self.entries.remove(&net);
                Ok(false)
            }
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                self.entries.remove(&net);
                Ok(false)
            }
            Err(source) => Err(DatapathError::Map {
                op: "remove",
                map: self.name,
                detail: net.to_string(),
                source,
            }),
        }
    }

    /// The value of exactly this entry (its hit counters), or None when it is not an entry.
    pub fn get(&self, net: IpNet) -> Result<Option<V>, DatapathError> {
        let net = net.trunc();
        if !self.entries.contains(&net) {
            return Ok(None);
        }
        // The entry exists, so the longest prefix matching its own key is the entry itself.
        let res = match net {
            IpNet::V4(n) => self.v4.get(&Key::new(n.prefix_len().into(), n.network().octets()), 0),
            IpNet::V6(n) => self.v6.get(&Key::new(n.prefix_len().into(), n.network().octets()), 0),
        };
        match res {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                op: "lookup",
                map: self.name,
                detail: net.to_string(),
                source,
            }),
        }
    }

    /// The entry that decides an address's verdict: the longest prefix containing it.
    pub fn lookup_addr(&self, addr: IpAddr) -> Result<Option<V>, DatapathError> {
        let res = match addr {
            IpAddr::V4(a) => self.v4.get(&Key::new(32, a.octets()), 0),
            IpAddr::V6(a) => self.v6.get(&Key::new(128, a.octets()), 0),
        };
        match res {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                op: "lookup",
                map: self.name,
                detail: addr.to_string(),
                source,
            }),
        }
    }

    /// Every entry with its value, read from the kernel (not from the userspace index), so it shows
    /// what is really enforced.
    pub fn list(&self) -> Result<Vec<(IpNet, V)>, DatapathError> {
        let err = |source| DatapathError::Map {
            op: "iterate",
            map: self.name,
            detail: String::new(),
            source,
        };
        let mut out = Vec::with_capacity(self.entries.len());
        for item in self.v4.iter() {
            let (k, v) = item.map_err(err)?;
            let net = ipnet::Ipv4Net::new(k.data().into(), k.prefix_len() as u8).expect("kernel prefix <= 32");
            out.push((IpNet::V4(net), v));
        }
        for item in self.v6.iter() {
            let (k, v) = item.map_err(err)?;
            let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8).expect("kernel prefix <= 128");
            out.push((IpNet::V6(net), v));
        }
        Ok(out)
    }
}

//! The in-memory mirror of the stored lists, with an index by expiry.
//!
//! The mirror is what this sensor enforces: the kernel holds exactly the CIDRs of mirror entries whose
//! scope applies here (global, or this sensor's id). Keeping it in memory lets expiry fire on a timer
//! set for the earliest deadline, and keeps enforcement decisions independent of the store's
//! availability.
//!
//! The blocklist also keeps a count of entries per address family and prefix length, so that the
//! most specific entry covering one address ([`Mirror::most_specific`], asked for every block-hit
//! event) costs one ordered-map lookup per prefix length in use, not a scan of a million entries
//! under the mirror's lock. The ordered map itself is the exact-match index: a second hash map
//! keyed by CIDR would cost about 50 MB at a million entries for a lookup that is already
//! O(log n).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_store::{ListEntry, ListKind, Scope};

pub type Key = (IpNet, Scope);

#[derive(Default)]
pub struct Mirror {
    block: BTreeMap<Key, ListEntry>,
    allow: BTreeMap<Key, ListEntry>,
    expiry: BTreeSet<(DateTime<Utc>, ListKind, IpNet, Scope)>,
    /// Blocklist entries per prefix length: `[0..=32]` IPv4, `[33..=161]` IPv6 (length + 33).
    block_lens: PrefixLens,
}

/// How many blocklist entries have each (family, prefix length).
struct PrefixLens([u32; 33 + 129]);

impl Default for PrefixLens {
    fn default() -> Self {
        Self([0; 33 + 129])
    }
}

impl PrefixLens {
    fn slot(net: &IpNet) -> usize {
        match net {
            IpNet::V4(n) => usize::from(n.prefix_len()),
            IpNet::V6(n) => 33 + usize::from(n.prefix_len()),
        }
    }

    fn add(&mut self, net: &IpNet) {
        self.0[Self::slot(net)] += 1;
    }

    fn sub(&mut self, net: &IpNet) {
        let c = &mut self.0[Self::slot(net)];
        *c = c.saturating_sub(1);
    }

    /// The sum of the sizes of the blocklist's prefixes of one family (0: IPv4, 1: IPv6), saturating:
    /// an upper bound of the addresses they cover together.
    fn size_bound(&self, family: usize) -> u128 {
        let (base, max) = if family == 0 {
            (0, 32u32)
        } else {
            (33, 128u32)
        };
        (0..=max)
            .map(|len| {
                let count = u128::from(self.0[base + len as usize]);
                let size = 1u128.checked_shl(max - len).unwrap_or(u128::MAX);
                count.saturating_mul(size)
            })
            .fold(0u128, u128::saturating_add)
    }

    /// Prefix lengths in use for `ip`'s family, longest first.
    fn longest_first(&self, ip: IpAddr) -> impl Iterator<Item = u8> + '_ {
        let (base, max) = match ip {
            IpAddr::V4(_) => (0, 32u8),
            IpAddr::V6(_) => (33, 128u8),
        };
        (0..=max)
            .rev()
            .filter(move |len| self.0[base + usize::from(*len)] > 0)
    }
}

impl Mirror {
    pub fn list(&self, kind: ListKind) -> &BTreeMap<Key, ListEntry> {
        match kind {
            ListKind::Block => &self.block,
            ListKind::Allow => &self.allow,
        }
    }

    fn list_mut(&mut self, kind: ListKind) -> &mut BTreeMap<Key, ListEntry> {
        match kind {
            ListKind::Block => &mut self.block,
            ListKind::Allow => &mut self.allow,
        }
    }

    /// Inserts or replaces an entry; returns the entry it replaced.
    pub fn put(&mut self, kind: ListKind, entry: ListEntry) -> Option<ListEntry> {
        let key = (entry.cidr, entry.scope.clone());
        let old = self.list_mut(kind).remove(&key);
        if let Some(o) = &old {
            self.unindex(kind, o);
        }
        if let Some(at) = entry.expires_at {
            self.expiry
                .insert((at, kind, entry.cidr, entry.scope.clone()));
        }
        if kind == ListKind::Block {
            self.block_lens.add(&entry.cidr);
        }
        self.list_mut(kind).insert(key, entry);
        old
    }

    fn unindex(&mut self, kind: ListKind, e: &ListEntry) {
        if let Some(at) = e.expires_at {
            self.expiry.remove(&(at, kind, e.cidr, e.scope.clone()));
        }
        if kind == ListKind::Block {
            self.block_lens.sub(&e.cidr);
        }
    }

    /// The most specific blocklist entry covering `ip` among those `keep` accepts: the longest
    /// prefix, and of one CIDR's several scopes the greatest in key order. This is exactly what
    /// `values().filter(keep && contains(ip)).max_by_key(prefix_len)` returns (`max_by_key` keeps
    /// the last of equal keys), without the scan.
    pub fn most_specific(
        &self,
        ip: IpAddr,
        mut keep: impl FnMut(&ListEntry) -> bool,
    ) -> Option<&ListEntry> {
        for len in self.block_lens.longest_first(ip) {
            let net = IpNet::new(ip, len)
                .expect("length within the family")
                .trunc();
            let found = self
                .block
                .range((net, Scope::Global)..)
                .take_while(|((c, _), _)| *c == net)
                .map(|(_, e)| e)
                .filter(|e| keep(e))
                .last();
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// An upper bound of the addresses of one family (0: IPv4, 1: IPv6) the blocklist covers.
    pub fn block_size_bound(&self, family: usize) -> u128 {
        self.block_lens.size_bound(family)
    }

    pub fn remove(&mut self, kind: ListKind, cidr: &IpNet, scope: &Scope) -> Option<ListEntry> {
        let old = self.list_mut(kind).remove(&(*cidr, scope.clone()))?;
        self.unindex(kind, &old);
        Some(old)
    }

    /// Scopes under which `cidr` is an entry.
    pub fn scopes_of(&self, kind: ListKind, cidr: &IpNet) -> Vec<Scope> {
        self.list(kind)
            .range((*cidr, Scope::Global)..)
            .take_while(|((c, _), _)| c == cidr)
            .map(|((_, s), _)| s.clone())
            .collect()
    }

    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.expiry.first().map(|(at, ..)| *at)
    }

    /// Removes and returns every entry whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: DateTime<Utc>) -> Vec<(ListKind, ListEntry)> {
        let mut out = Vec::new();
        while let Some((at, kind, cidr, scope)) = self.expiry.first().cloned() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(e) = self.list_mut(kind).remove(&(cidr, scope)) {
                if kind == ListKind::Block {
                    self.block_lens.sub(&e.cidr);
                }
                out.push((kind, e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cidr: &str, scope: Scope, exp: Option<i64>) -> ListEntry {
        let mut e = ListEntry::new(cidr.parse().unwrap(), scope);
        e.expires_at = exp.map(|s| DateTime::from_timestamp(s, 0).unwrap());
        e
    }

    #[test]
    fn expiry_order_and_replacement() {
        let mut m = Mirror::default();
        m.put(
            ListKind::Block,
            entry("10.0.0.0/24", Scope::Global, Some(300)),
        );
        m.put(
            ListKind::Block,
            entry("10.0.1.0/24", Scope::Global, Some(100)),
        );
        m.put(ListKind::Allow, entry("10.0.2.0/24", Scope::Global, None));
        assert_eq!(m.next_expiry().unwrap().timestamp(), 100);
        // Replacing an entry moves its deadline.
        m.put(
            ListKind::Block,
            entry("10.0.1.0/24", Scope::Global, Some(500)),
        );
        assert_eq!(m.next_expiry().unwrap().timestamp(), 300);
        let gone = m.take_expired(DateTime::from_timestamp(400, 0).unwrap());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.cidr.to_string(), "10.0.0.0/24");
        assert_eq!(m.list(ListKind::Block).len(), 1);
        assert_eq!(m.list(ListKind::Allow).len(), 1);
        // A permanent replacement leaves no deadline behind.
        m.put(ListKind::Block, entry("10.0.1.0/24", Scope::Global, None));
        assert_eq!(m.next_expiry(), None);
    }

    #[test]
    fn scopes_of_a_cidr() {
        let mut m = Mirror::default();
        m.put(ListKind::Block, entry("10.0.0.0/24", Scope::Global, None));
        m.put(
            ListKind::Block,
            entry("10.0.0.0/24", Scope::Sensor("a".into()), None),
        );
        m.put(
            ListKind::Block,
            entry("10.0.1.0/24", Scope::Sensor("a".into()), None),
        );
        assert_eq!(
            m.scopes_of(ListKind::Block, &"10.0.0.0/24".parse().unwrap())
                .len(),
            2
        );
        m.remove(
            ListKind::Block,
            &"10.0.0.0/24".parse().unwrap(),
            &Scope::Global,
        );
        assert_eq!(
            m.scopes_of(ListKind::Block, &"10.0.0.0/24".parse().unwrap()),
            vec![Scope::Sensor("a".into())]
        );
    }

    /// The scan that `most_specific` replaces, kept as the reference.
    fn scan(m: &Mirror, ip: IpAddr, keep: impl Fn(&ListEntry) -> bool) -> Option<&ListEntry> {
        m.list(ListKind::Block)
            .values()
            .filter(|e| keep(e) && e.cidr.contains(&ip))
            .max_by_key(|e| e.cidr.prefix_len())
    }

    #[test]
    fn most_specific_answers_as_the_scan_does_on_random_sets() {
        // xorshift: deterministic, so that a failure names a reproducible seed.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let scopes = [
            Scope::Global,
            Scope::Sensor("a".into()),
            Scope::Sensor("b".into()),
        ];
        for round in 0..40 {
            let mut m = Mirror::default();
            let mut added = Vec::new();
            // Addresses from a small space (10.0.0.0/20, fd00::/116) so that prefixes nest and overlap.
            for _ in 0..(50 + next() % 300) {
                let r = next();
                let cidr: IpNet = if r % 4 == 0 {
                    let a = std::net::Ipv6Addr::from(0xfd00u128 << 112 | u128::from(next() % 4096));
                    IpNet::new(a.into(), 112 + (next() % 17) as u8)
                        .unwrap()
                        .trunc()
                } else {
                    let a = std::net::Ipv4Addr::from(0x0a00_0000u32 | (next() % 4096) as u32);
                    IpNet::new(a.into(), 18 + (next() % 15) as u8)
                        .unwrap()
                        .trunc()
                };
                let scope = scopes[(next() % 3) as usize].clone();
                let exp = (next() % 3 != 0).then(|| (next() % 1000) as i64);
                m.put(
                    ListKind::Block,
                    entry(&cidr.to_string(), scope.clone(), exp),
                );
                added.push((cidr, scope));
            }
            // Removals and expiry must keep the per-length counts right.
            for _ in 0..(next() % 40) {
                let (c, s) = &added[(next() % added.len() as u64) as usize];
                m.remove(ListKind::Block, c, s);
            }
            m.take_expired(DateTime::from_timestamp((next() % 300) as i64, 0).unwrap());
            let until = DateTime::from_timestamp((next() % 1000) as i64, 0);
            for _ in 0..300 {
                let ip: IpAddr = if next() % 4 == 0 {
                    std::net::Ipv6Addr::from(0xfd00u128 << 112 | u128::from(next() % 4096)).into()
                } else {
                    std::net::Ipv4Addr::from(0x0a00_0000u32 | (next() % 4096) as u32).into()
                };
                // The two filters the control plane uses: scope applies here, and "still blocked then".
                let applies = |e: &ListEntry| e.scope != Scope::Sensor("b".into());
                let lasting = |e: &ListEntry| {
                    applies(e) && e.expires_at.is_none_or(|t| until.is_some_and(|u| t >= u))
                };
                let want = scan(&m, ip, applies).map(|e| (e.cidr, e.scope.clone()));
                let got = m
                    .most_specific(ip, applies)
                    .map(|e| (e.cidr, e.scope.clone()));
                assert_eq!(got, want, "round {round}, {ip}");
                let want = scan(&m, ip, lasting).map(|e| (e.cidr, e.scope.clone()));
                let got = m
                    .most_specific(ip, lasting)
                    .map(|e| (e.cidr, e.scope.clone()));
                assert_eq!(got, want, "round {round}, {ip}, until {until:?}");
            }
            m = Mirror::default();
            assert_eq!(m.most_specific("10.0.0.1".parse().unwrap(), |_| true), None);
        }
    }
}

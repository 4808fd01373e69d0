//! The deterministic "one million blocklist entries" set shared by the million test and the bench.
//!
//! Mixed like a real feed: mostly single hosts, some /24 networks and a few /16s, spread over the
//! whole IPv4 space rather than packed into one corner of the trie (which would flatter the LPM trie's
//! depth). Multiplying an index by an odd constant is a bijection modulo 2^k, so each family of
//! prefixes is distinct without a set to deduplicate against.

use ipnet::{IpNet, Ipv4Net};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

pub const MILLION: usize = 1_000_000;
pub const HOSTS: usize = 990_000;
pub const NETS_24: usize = 9_000;
pub const NETS_16: usize = 1_000;

/// `MILLION` distinct IPv4 prefixes: `HOSTS` /32s, then `NETS_24` /24s, then `NETS_16` /16s.
pub fn million_v4() -> Vec<IpNet> {
    let mut v = Vec::with_capacity(MILLION);
    for i in 0..HOSTS as u32 {
        v.push(net(i.wrapping_mul(0x9e37_79b1), 32));
    }
    for i in 0..NETS_24 as u32 {
        // Bijection on 24 bits, shifted into the network part.
        v.push(net((i.wrapping_mul(0x0079_b9e3) & 0x00ff_ffff) << 8, 24));
    }
    for i in 0..NETS_16 as u32 {
        v.push(net((i.wrapping_mul(0x9e37) & 0xffff) << 16, 16));
    }
    v
}

fn net(addr: u32, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).expect("prefix length <= 32"))
}

/// The longest prefix in `nets` containing `addr`: the entry whose hit counter a packet must bump.
pub fn longest_match(nets: &[IpNet], addr: IpAddr) -> Option<IpNet> {
    nets.iter()
        .filter(|n| n.contains(&addr))
        .max_by_key(|n| n.prefix_len())
        .copied()
}

/// The first address at or after `start` that no prefix in `nets` contains.
pub fn first_uncovered(nets: &[IpNet], start: Ipv4Addr) -> Ipv4Addr {
    (u32::from(start)..)
        .map(Ipv4Addr::from)
        .find(|a| longest_match(nets, IpAddr::V4(*a)).is_none())
        .expect("the prefixes cover far less than the whole space")
}

/// An address inside `outer` that is not itself one of the /32 entries, so its longest match is a
/// shorter prefix and the test exercises the trie's prefix (not exact-host) path.
pub fn inside_but_not_host(nets: &[IpNet], outer: IpNet) -> IpAddr {
    outer
        .hosts()
        .find(|a| !nets.contains(&IpNet::from(*a)))
        .expect("a /24 or /16 has addresses that are not /32 entries")
}

/// Hash index over a prefix set: longest-prefix match by trying each prefix length, for callers that
/// check many addresses (a linear scan over a million prefixes per address would take minutes).
pub struct PrefixIndex(HashSet<IpNet>);

impl PrefixIndex {
    pub fn new(nets: &[IpNet]) -> Self {
        PrefixIndex(nets.iter().copied().collect())
    }

    pub fn longest_match(&self, addr: Ipv4Addr) -> Option<IpNet> {
        (0..=32u8)
            .rev()
            .map(|len| IpNet::V4(Ipv4Net::new(addr, len).expect("len <= 32").trunc()))
            .find(|n| self.0.contains(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_distinct_mixed_prefixes() {
        let v = million_v4();
        assert_eq!(v.len(), MILLION);
        let set: HashSet<_> = v.iter().collect();
        assert_eq!(set.len(), MILLION, "prefixes must be distinct");
        let count = |len| v.iter().filter(|n| n.prefix_len() == len).count();
        assert_eq!((count(32), count(24), count(16)), (HOSTS, NETS_24, NETS_16));
        // Stored in canonical form (host bits zero), as the trie keys them.
        assert!(v.iter().all(|n| n.network() == n.addr()));
        // Spread: every top-level /8 holds some host entries.
        let firsts: HashSet<u8> = v[..HOSTS]
            .iter()
            .map(|n| match n.addr() {
                IpAddr::V4(a) => a.octets()[0],
                IpAddr::V6(_) => unreachable!(),
            })
            .collect();
        assert_eq!(firsts.len(), 256);
    }

    #[test]
    fn lookup_helpers() {
        let v = million_v4();
        let miss = first_uncovered(&v, Ipv4Addr::new(10, 213, 200, 1));
        assert_eq!(longest_match(&v, IpAddr::V4(miss)), None);
        let outer = v[HOSTS + NETS_24];
        let a = inside_but_not_host(&v, outer);
        assert!(outer.contains(&a));
        assert!(longest_match(&v, a).unwrap().prefix_len() < 32);
        let idx = PrefixIndex::new(&v);
        let IpAddr::V4(a4) = a else { unreachable!() };
        assert_eq!(idx.longest_match(a4), longest_match(&v, a));
        assert_eq!(idx.longest_match(miss), None);
    }
}

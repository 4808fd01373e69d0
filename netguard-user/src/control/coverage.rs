//! Whether blocklist prefixes together cover a whole address family.
//!
//! `0.0.0.0/0` needs `force`, and so must `0.0.0.0/1` plus `128.0.0.0/1`, or any other set of
//! prefixes whose union is every address: the effect on the host is the same. The exact answer
//! merges sorted intervals, which costs a sort of the whole blocklist; a cheap upper bound (the sum
//! of the prefixes' sizes, from the mirror's count per prefix length) rules it out first for any
//! realistic list, since a union cannot be larger than the sum of its parts.

use ipnet::IpNet;
use netguard_store::{ListEntry, ListKind, Scope};

use super::{Mirror, request::FieldError};

/// The new block entries (with their index in the request) that, with the blocklist this sensor
/// enforces, would block every address of a family, and were sent without `force`: one error each.
pub(super) fn refusals(
    mirror: &Mirror,
    entries: &[(usize, ListEntry)],
    forced: impl Fn(usize) -> bool,
    applies: impl Fn(&Scope) -> bool,
    bulk: bool,
) -> Vec<FieldError> {
    let mut out = Vec::new();
    for fam in 0..2 {
        let new: Vec<&(usize, ListEntry)> = entries
            .iter()
            .filter(|(_, e)| family(&e.cidr) == fam && applies(&e.scope))
            .collect();
        if new.iter().all(|(i, _)| forced(*i)) {
            continue;
        }
        let bound = new
            .iter()
            .map(|(_, e)| size(&e.cidr))
            .fold(mirror.block_size_bound(fam), u128::saturating_add);
        if bound < family_size(fam) {
            continue;
        }
        let enforced = || {
            mirror
                .list(ListKind::Block)
                .iter()
                .filter(|((_, scope), _)| applies(scope))
                .map(|((cidr, _), _)| cidr)
        };
        // Only the request that completes the cover needs `force`: once an operator has forced
        // it, later entries change nothing.
        if !covers_family(fam, enforced().chain(new.iter().map(|(_, e)| &e.cidr)))
            || covers_family(fam, enforced())
        {
            continue;
        }
        let name = if fam == 0 { "IPv4" } else { "IPv6" };
        for (i, e) in new.into_iter().filter(|(i, _)| !forced(*i)) {
            let prefix = if bulk {
                format!("items[{i}].")
            } else {
                String::new()
            };
            out.push(FieldError::new(
                format!("{prefix}cidr"),
                format!("{}, together with the blocklist, would block every {name} address; send \"force\": true if you really mean it", e.cidr),
            ));
        }
    }
    out
}

/// IPv4 = 0, IPv6 = 1.
pub fn family(net: &IpNet) -> usize {
    match net {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

/// Number of addresses in a prefix, saturating at `u128::MAX` for `::/0`.
pub fn size(net: &IpNet) -> u128 {
    let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Addresses in a family, saturating at `u128::MAX` for IPv6.
pub fn family_size(family: usize) -> u128 {
    if family == 0 { 1 << 32 } else { u128::MAX }
}

/// The first and last address of a prefix as integers.
fn bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// True when the union of `nets` (all of family `family`; others are ignored) is every address of
/// that family.
pub fn covers_family<'a>(family_idx: usize, nets: impl IntoIterator<Item = &'a IpNet>) -> bool {
    let mut spans: Vec<(u128, u128)> = nets
        .into_iter()
        .filter(|n| family(n) == family_idx)
        .map(bounds)
        .collect();
    spans.sort_unstable();
    let last = if family_idx == 0 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    // `next` is the first address not yet covered.
    let mut next: u128 = 0;
    for (start, end) in spans {
        if start > next {
            return false;
        }
        if end >= last {
            return true;
        }
        next = next.max(end + 1);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn two_halves_cover_ipv4_and_one_half_does_not() {
        assert!(covers_family(0, &nets(&["0.0.0.0/1", "128.0.0.0/1"])));
        assert!(!covers_family(0, &nets(&["0.0.0.0/1", "128.0.0.0/2"])));
        assert!(covers_family(
            0,
            &nets(&["128.0.0.0/1", "0.0.0.0/2", "64.0.0.0/2", "10.0.0.0/8"])
        ));
        assert!(covers_family(0, &nets(&["0.0.0.0/0"])));
        assert!(!covers_family(0, &nets(&["::/1", "8000::/1"])));
    }

    #[test]
    fn ipv6_halves_cover_ipv6_and_a_gap_of_one_address_does_not() {
        assert!(covers_family(1, &nets(&["::/1", "8000::/1"])));
        assert!(covers_family(1, &nets(&["::/0"])));
        // Everything but the last address.
        let mut v: Vec<IpNet> = (0..128)
            .map(|len| {
                let host = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                let addr = std::net::Ipv6Addr::from(host);
                IpNet::new(addr.into(), (len + 1) as u8).unwrap().trunc()
            })
            .collect();
        v.dedup();
        assert!(!covers_family(1, &v), "the last address is not covered");
        v.push(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"
                .parse()
                .unwrap(),
        );
        assert!(covers_family(1, &v));
    }

    #[test]
    fn sizes_saturate() {
        assert_eq!(size(&"0.0.0.0/0".parse().unwrap()), 1 << 32);
        assert_eq!(size(&"::/0".parse().unwrap()), u128::MAX);
        assert_eq!(size(&"::/1".parse().unwrap()), 1 << 127);
        assert_eq!(size(&"10.0.0.7/32".parse().unwrap()), 1);
    }
}

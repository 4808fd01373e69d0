//! Where the never-block set comes from, read from the host: its own addresses, its routes' next
//! hops, its resolvers, and its socket table. The parsers take the files' text, so they are
//! unit-tested on given input; [`read_host`] reads the real files.
//!
//! `/proc/net/*` is per network namespace, and `ip netns exec` bind-mounts
//! `/etc/netns/NAME/resolv.conf` over `/etc/resolv.conf`: read from inside the sensor's namespace,
//! these are that namespace's own facts.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// `nameserver` lines of a resolv.conf (an IPv6 scope suffix `%eth0` is dropped).
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            w.next()?.split('%').next()?.parse().ok()
        })
        .collect()
}

/// Gateways of `/proc/net/route` (IPv4; addresses in the kernel's byte order, little-endian hex).
pub fn route_next_hops_v4(proc_net_route: &str) -> Vec<IpAddr> {
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let gw = l.split_whitespace().nth(2)?;
            let raw = u32::from_str_radix(gw, 16).ok()?;
            (raw != 0).then(|| IpAddr::V4(Ipv4Addr::from(raw.to_ne_bytes())))
        })
        .collect()
}

/// Next hops of `/proc/net/ipv6_route` (the fifth column, 32 hex digits in network order).
pub fn route_next_hops_v6(proc_net_ipv6_route: &str) -> Vec<IpAddr> {
    proc_net_ipv6_route
        .lines()
        .filter_map(|l| {
            let hop = u128::from_str_radix(l.split_whitespace().nth(4)?, 16).ok()?;
            (hop != 0).then(|| IpAddr::V6(Ipv6Addr::from(hop)))
        })
        .collect()
}

/// TCP states of `/proc/net/tcp` that only exist after a three-way handshake completed.
/// ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING. SYN_RECV (what a SYN flood
/// leaves) and LISTEN are not.
const HANDSHAKE_DONE: [u8; 7] = [0x01, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0B];
const ESTABLISHED: u8 = 0x01;

/// One row of the socket table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Socket {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub state: u8,
}

impl Socket {
    /// The peer completed a TCP handshake with this host: it received our SYN-ACK (or answered our
    /// SYN), which a forged source address cannot do.
    pub fn handshake_done(&self) -> bool {
        HANDSHAKE_DONE.contains(&self.state)
    }

    pub fn established(&self) -> bool {
        self.state == ESTABLISHED
    }
}

/// `ADDR:PORT` of `/proc/net/tcp{,6}`: the address as 32-bit words in host byte order.
fn endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // A v4 peer of a dual-stack socket: judge it by its IPv4 address, as XDP does.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Rows of `/proc/net/tcp` or `/proc/net/tcp6`.
pub fn sockets(proc_net_tcp: &str) -> Vec<Socket> {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            let local = endpoint(w.next()?)?;
            let remote = endpoint(w.next()?)?;
            let state = u8::from_str_radix(w.next()?, 16).ok()?;
            Some(Socket {
                local,
                remote,
                state,
            })
        })
        .collect()
}

/// The host's own addresses (every interface, loopback included), from getifaddrs(3).
pub fn own_addresses() -> std::io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family tells which sockaddr type ifa_addr points to.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sa = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.insert(IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// What the host says about itself now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFacts {
    pub own: BTreeSet<IpAddr>,
    pub next_hops: BTreeSet<IpAddr>,
    pub resolvers: BTreeSet<IpAddr>,
    pub sockets: Vec<Socket>,
}

/// Reads the host's files. A file that cannot be read contributes nothing (a host without IPv6 has
/// no `/proc/net/ipv6_route`), and the reason is logged once per refresh at debug level.
pub fn read_host() -> HostFacts {
    let read = |p: &str| match std::fs::read_to_string(p) {
        Ok(s) => s,
        Err(e) => {
            log::debug!("never-block: cannot read {p}: {e}");
            String::new()
        }
    };
    let mut sockets = sockets(&read("/proc/net/tcp"));
    sockets.extend(self::sockets(&read("/proc/net/tcp6")));
    HostFacts {
        own: own_addresses().unwrap_or_else(|e| {
            log::warn!("never-block: cannot list the host's addresses: {e}");
            BTreeSet::new()
        }),
        next_hops: route_next_hops_v4(&read("/proc/net/route"))
            .into_iter()
            .chain(route_next_hops_v6(&read("/proc/net/ipv6_route")))
            .collect(),
        resolvers: resolvers(&read("/etc/resolv.conf")).into_iter().collect(),
        sockets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolvers_from_a_resolv_conf() {
        let text = "# generated\nsearch lab.example\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\n\
                    nameserver  2001:db8::53 \noptions ndots:2\nnameserver bogus\n";
        assert_eq!(
            resolvers(text),
            [ip("10.0.0.53"), ip("fe80::1"), ip("2001:db8::53")]
        );
    }

    #[test]
    fn next_hops_from_a_routing_table() {
        // `ip route add 198.51.100.0/24 via 10.9.0.254` plus an on-link route (gateway 0).
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  ng0\t0000090A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  ng0\t006433C6\tFE00090A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(route_next_hops_v4(v4), [ip("10.9.0.254")]);
        let v6 = "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 \
                  fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ng0\n\
                  fd000000000000000000000000000000 40 00000000000000000000000000000000 00 \
                  00000000000000000000000000000000 00000100 00000001 00000000 00000001 ng0\n";
        assert_eq!(route_next_hops_v6(v6), [ip("fe80::1")]);
    }

    #[test]
    fn sockets_from_a_socket_table() {
        // 10.9.0.1:22 <- 10.9.0.2:40000 established; a SYN_RECV half-open from 10.9.0.3; a listener.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100090A:0016 0200090A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1\n\
           1: 0100090A:0050 0300090A:9C41 03 00000000:00000000 00:00000000 00000000     0        0 2\n\
           2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3\n\
           3: 0100090A:0050 0400090A:9C42 06 00000000:00000000 00:00000000 00000000     0        0 4\n";
        let s = sockets(v4);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].local, (ip("10.9.0.1"), 22));
        assert_eq!(s[0].remote, (ip("10.9.0.2"), 40000));
        assert!(s[0].established() && s[0].handshake_done());
        assert!(!s[1].handshake_done(), "SYN_RECV: a forged SYN leaves this");
        assert!(!s[2].handshake_done(), "LISTEN");
        assert!(s[3].handshake_done() && !s[3].established(), "TIME_WAIT");

        // tcp6: 2001:db8::1 <- 2001:db8::2 and a v4-mapped peer.
        let v6 = "  sl  local_address                         remote_address                        st\n\
           0: B80D0120000000000000000001000000:0016 B80D0120000000000000000002000000:C350 01 0\n\
           1: 0000000000000000FFFF00000100090A:0016 0000000000000000FFFF00000500090A:C351 01 0\n";
        let s = sockets(v6);
        assert_eq!(s[0].remote, (ip("2001:db8::2"), 50000));
        assert_eq!(
            s[1].remote,
            (ip("10.9.0.5"), 50001),
            "v4-mapped peers are IPv4"
        );
    }

    #[test]
    fn own_addresses_include_loopback() {
        let own = own_addresses().unwrap();
        assert!(own.contains(&ip("127.0.0.1")), "{own:?}");
    }
}

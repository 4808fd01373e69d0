//! The lab's address plan. The data set is labelled by SOURCE ADDRESS, so the plan is the ground truth:
//! benign clients and attackers never share an address, and each attack class has addresses of its own
//! (10.230.<class>.x), so a row can be traced back to the tool that made it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const LAB_V4_NET: &str = "10.230.0.0/16";
pub const LAB_V6_NET: &str = "fd00:230::/64";

/// One namespace on the lab bridge.
pub struct Host {
    pub ns: &'static str,
    /// Its veth end in the bridge namespace (at most 15 characters, like every interface name).
    pub port: &'static str,
    pub v4: &'static [Ipv4Addr],
    pub v6: &'static [Ipv6Addr],
    pub role: Role,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Sensor,
    Benign,
    Attacker,
}

impl Host {
    pub fn dev(&self) -> &'static str {
        super::topology::HOST_IF
    }
}

const fn v4(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 230, c, d)
}
const fn v6(g: u16, h: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x230, 0, 0, 0, 0, g, h)
}

/// The IPv6 group that reads like the IPv4 octet (14 -> 0x14), so fd00:230::14:1 is 10.230.14.1's twin.
const fn group(octet: u8) -> u16 {
    (octet as u16 / 10) * 16 + octet as u16 % 10
}

pub const SENSOR_V4: Ipv4Addr = v4(0, 1);
pub const SENSOR_V6: Ipv6Addr = v6(0, 1);

/// Third octet of each attack class's addresses (and the 7th group of its IPv6 ones).
pub const NET_SYN: u8 = 11;
pub const NET_UDP: u8 = 12;
pub const NET_ICMP: u8 = 13;
pub const NET_SCAN: u8 = 14;
pub const NET_SSH: u8 = 15;

pub const SENSOR: Host = Host {
    ns: "nglab-sensor",
    port: "p-sensor",
    v4: &[SENSOR_V4],
    v6: &[SENSOR_V6],
    role: Role::Sensor,
};
pub const BEN_A: Host = Host {
    ns: "nglab-ben-a",
    port: "p-ben-a",
    v4: &[v4(1, 1), v4(1, 2), v4(1, 3)],
    v6: &[v6(1, 1), v6(1, 2)],
    role: Role::Benign,
};
pub const BEN_B: Host = Host {
    ns: "nglab-ben-b",
    port: "p-ben-b",
    v4: &[v4(2, 1), v4(2, 2), v4(2, 3)],
    v6: &[v6(2, 1)],
    role: Role::Benign,
};
/// Two attacker namespaces, so that a distributed attack comes from two machines at once. Each holds
/// two addresses per attack class: .1/.2 on ATT_A, .3/.4 on ATT_B.
pub const ATT_A: Host = Host {
    ns: "nglab-att-a",
    port: "p-att-a",
    v4: &[
        v4(NET_SYN, 1),
        v4(NET_SYN, 2),
        v4(NET_UDP, 1),
        v4(NET_UDP, 2),
        v4(NET_ICMP, 1),
        v4(NET_ICMP, 2),
        v4(NET_SCAN, 1),
        v4(NET_SCAN, 2),
        v4(NET_SSH, 1),
        v4(NET_SSH, 2),
    ],
    v6: &[v6(group(NET_SCAN), 1), v6(group(NET_SSH), 1)],
    role: Role::Attacker,
};
pub const ATT_B: Host = Host {
    ns: "nglab-att-b",
    port: "p-att-b",
    v4: &[
        v4(NET_SYN, 3),
        v4(NET_SYN, 4),
        v4(NET_UDP, 3),
        v4(NET_UDP, 4),
        v4(NET_ICMP, 3),
        v4(NET_ICMP, 4),
        v4(NET_SCAN, 3),
        v4(NET_SCAN, 4),
        v4(NET_SSH, 3),
        v4(NET_SSH, 4),
    ],
    v6: &[v6(group(NET_SCAN), 3), v6(group(NET_SSH), 3)],
    role: Role::Attacker,
};

pub const HOSTS: [&Host; 5] = [&SENSOR, &BEN_A, &BEN_B, &ATT_A, &ATT_B];

/// An attacker address: `host` is ATT_A or ATT_B, `class_net` one of the NET_* octets, `n` 1..=4.
pub fn attacker_v4(class_net: u8, n: u8) -> Ipv4Addr {
    v4(class_net, n)
}

pub fn attacker_v6(class_net: u8, n: u8) -> Ipv6Addr {
    v6(group(class_net), n as u16)
}

/// Every address of the given role.
pub fn of_role(role: Role) -> Vec<IpAddr> {
    HOSTS
        .iter()
        .filter(|h| h.role == role)
        .flat_map(|h| {
            h.v4.iter()
                .map(|a| IpAddr::V4(*a))
                .chain(h.v6.iter().map(|a| IpAddr::V6(*a)))
        })
        .collect()
}

/// Every address the lab assigns, whatever its role.
pub fn all() -> Vec<IpAddr> {
    [Role::Sensor, Role::Benign, Role::Attacker]
        .into_iter()
        .flat_map(of_role)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_disjoint_and_inside_the_lab_prefixes() {
        let all = all();
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "an address is assigned twice");
        for a in &all {
            match a {
                IpAddr::V4(v) => assert_eq!(v.octets()[..2], [10, 230], "{a}"),
                IpAddr::V6(v) => assert_eq!(v.segments()[..4], [0xfd00, 0x230, 0, 0], "{a}"),
            }
        }
        for h in HOSTS {
            assert!(h.port.len() <= 15 && h.ns.starts_with(super::super::topology::NS_PREFIX));
        }
        assert!(ATT_A.v4.contains(&attacker_v4(NET_SSH, 1)));
        assert!(ATT_B.v6.contains(&attacker_v6(NET_SCAN, 3)));
        assert_eq!(attacker_v6(NET_SSH, 1).to_string(), "fd00:230::15:1");
    }
}

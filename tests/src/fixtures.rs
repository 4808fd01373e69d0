//! Shared test fixtures: a small-map datapath, expected flow keys, and flow-table lookups.

use crate::frames::L4;
use crate::netns::require_root;
use ipnet::IpNet;
use netguard_common::{Counter, Counters, FAMILY_V4, FAMILY_V6, FlowKey, FlowStats};
use netguard_user::datapath::{Datapath, DatapathConfig};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Addresses of crafted frames: the lab's attacker and sensor (never sent anywhere by TestRun).
pub const ATT: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
pub const SEN: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
pub const ATT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 1, 0, 0, 0, 0, 2);
pub const SEN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 1, 0, 0, 0, 0, 1);

/// XDP verdicts as BPF_PROG_TEST_RUN reports them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Maps sized for a handful of test packets: loading stays fast and parallel tests do not each pin
/// the ~150 MiB a preallocated million-entry LRU would take.
pub fn small_config() -> DatapathConfig {
    DatapathConfig {
        blocklist_v4_max: 1024,
        blocklist_v6_max: 1024,
        allowlist_v4_max: 256,
        allowlist_v6_max: 256,
        flows_max: 4096,
        events_bytes: 1 << 16,
        ..DatapathConfig::default()
    }
}

/// Loads (and verifies) the datapath or fails the test with the loader's full error, which includes
/// the verifier log when the kernel rejected the program.
pub fn load(cfg: &DatapathConfig) -> Datapath {
    Datapath::load(cfg).unwrap_or_else(|e| panic!("Datapath::load failed: {e}\n{e:?}"))
}

pub fn load_small() -> Datapath {
    load(&small_config())
}

/// `let Some(dp) = setup() else { return };`: root check, then a fresh small datapath. A fresh one
/// per test keeps counters exact while libtest runs tests in parallel.
pub fn setup() -> Option<Datapath> {
    require_root().then(load_small)
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
    }
}

pub fn net(s: &str) -> IpNet {
    s.parse().expect("valid CIDR")
}

pub fn key_v4(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16, proto: u8) -> FlowKey {
    let mut k = FlowKey {
        src_port,
        dst_port,
        proto,
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    k.src[..4].copy_from_slice(&src.octets());
    k.dst[..4].copy_from_slice(&dst.octets());
    k
}

pub fn key_v6(src: Ipv6Addr, dst: Ipv6Addr, src_port: u16, dst_port: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: src.octets(),
        dst: dst.octets(),
        src_port,
        dst_port,
        proto,
        family: FAMILY_V6,
        ..FlowKey::default()
    }
}

/// The flow table, failing the test on a map read error.
pub fn flows(dp: &Datapath) -> Vec<(FlowKey, FlowStats)> {
    dp.flows().unwrap_or_else(|e| panic!("reading flows: {e}"))
}

/// Stats of exactly `key`; on a miss, the panic lists what the table does hold, which is usually the
/// quickest way to see a wrong port or byte order.
pub fn flow(dp: &Datapath, key: &FlowKey) -> FlowStats {
    let all = flows(dp);
    all.iter()
        .find(|(k, _)| k == key)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("flow {key:?} not in table; table holds: {all:#?}"))
}

pub fn counters(dp: &Datapath) -> Counters {
    dp.counters()
        .unwrap_or_else(|e| panic!("reading counters: {e}"))
}

/// Every non-zero counter by name: printed in assertion messages so a failure shows the whole picture.
pub fn nonzero(c: &Counters) -> Vec<(&'static str, u64)> {
    Counter::ALL
        .iter()
        .filter(|k| c.get(**k) != 0)
        .map(|k| (k.name(), c.get(*k)))
        .collect()
}

/// Runs one frame through the program, failing the test if the syscall itself fails.
pub fn run(dp: &Datapath, frame: &[u8]) -> u32 {
    dp.test_run(frame)
        .unwrap_or_else(|e| panic!("test_run of {} bytes: {e}", frame.len()))
}

//! Real packets through a real attachment: the program in native (driver) mode on the sensor's veth,
//! traffic from the attacker namespace with ping and a bounded hping3 burst.
//!
//! Everything stays inside two namespaces this test creates (see `netns`); the hping3 burst is capped
//! by count (-c), rate (-i) and a wall-clock `timeout`.

use ipnet::IpNet;
use netguard_common::Counter;
use netguard_tests::fixtures::{counters, flow, key_v4, load_small, nonzero};
use netguard_tests::netns::{
    ATTACKER_V4, ATTACKER_V6, NetnsPair, SENSOR_IF, SENSOR_V4, SENSOR_V6, link_details, ping,
    require_root, require_tool, run_in_timeout,
};
use netguard_user::datapath::{AttachMode, Datapath};
use std::time::Duration;

const SYN_BURST: u32 = 300;

/// Attaches in driver mode inside the sensor namespace (the calling thread must be in it) and checks
/// with `ip -d link` that the kernel really shows a native XDP program, not the generic fallback.
fn attach_driver(dp: &mut Datapath, lab: &NetnsPair) {
    let mode = dp
        .attach(SENSOR_IF, AttachMode::Driver)
        .unwrap_or_else(|e| panic!("attach {SENSOR_IF} in driver mode: {e}"));
    assert!(
        matches!(mode, AttachMode::Driver),
        "asked for driver, got {mode:?}"
    );
    let link = link_details(&lab.sensor, SENSOR_IF);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "{link}"
    );
}

fn detach(dp: &mut Datapath, lab: &NetnsPair) {
    dp.detach().expect("detach");
    let link = link_details(&lab.sensor, SENSOR_IF);
    assert!(
        !link.contains("prog/xdp"),
        "still attached after detach: {link}"
    );
}

#[test]
fn ipv4_traffic_is_counted_and_blocklist_drops_it() {
    if !(require_root()
        && require_tool("ping")
        && require_tool("hping3")
        && require_tool("timeout"))
    {
        return;
    }
    let lab = NetnsPair::new("v4");
    // Declared after `lab` so it is dropped first: the thread leaves the namespace before deletion.
    let _inside = lab.enter_sensor();
    let mut dp = load_small();
    attach_driver(&mut dp, &lab);
    let [primary, in_blocked, elsewhere] = ATTACKER_V4.map(|a| a.to_string());
    let sensor = SENSOR_V4.to_string();

    // Baseline reachability from every attacker address (also warms the ARP caches on both sides).
    for from in [&primary, &in_blocked, &elsewhere] {
        let p = ping(&lab.attacker, from, &sensor, 3);
        assert_eq!(p.received, 3, "ping from {from} before any block: {p:?}");
    }

    // -S SYN, fixed source port (-s with -k keeps it, instead of hping3's default of one new port per
    // packet) so the whole burst is one flow; -i u1000 = 1000 packets/s, so 300 packets take ~0.3 s.
    let out = run_in_timeout(
        &lab.attacker,
        Duration::from_secs(20),
        &[
            "hping3",
            "-q",
            "-S",
            "-p",
            "80",
            "-s",
            "40000",
            "-k",
            "-c",
            &SYN_BURST.to_string(),
            "-i",
            "u1000",
            &sensor,
        ],
    );
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "hping3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = flow(&dp, &key_v4(ATTACKER_V4[0], SENSOR_V4, 40000, 80, 6));
    // veth hands every frame to the peer's XDP ring and nothing else sends to this port, so all 300
    // should arrive; the 10-packet slack only absorbs an hping3 that stops a few packets early when
    // the timeout races it on a loaded 2-core machine. A datapath that drops or misparses fails by far.
    assert!(
        s.syn >= SYN_BURST - 10,
        "syn {} of {SYN_BURST}: {s:?}",
        s.syn
    );
    assert_eq!(u64::from(s.syn), s.packets, "a pure SYN burst: {s:?}");
    let c = counters(&dp);
    assert!(
        c.get(Counter::PassPackets) >= u64::from(9 + SYN_BURST - 10),
        "{:?}",
        nonzero(&c)
    );
    assert_eq!(c.get(Counter::DropPackets), 0, "{:?}", nonzero(&c));

    // Block the /24 of the second attacker address.
    let blocked: IpNet = "10.213.66.0/24".parse().unwrap();
    dp.block_insert(blocked).expect("block");
    let p = ping(&lab.attacker, &in_blocked, &sensor, 4);
    assert_eq!(
        (p.transmitted, p.received),
        (4, 0),
        "blocked source must get nothing back"
    );
    let hits = dp.block_get(blocked).expect("get").expect("entry").hits;
    assert_eq!(hits, 4, "one hit per echo request");
    assert!(counters(&dp).get(Counter::DropBlocklistV4) >= 4);
    // Another /24 of the same host is unaffected.
    let p = ping(&lab.attacker, &elsewhere, &sensor, 3);
    assert_eq!(p.received, 3, "outside the blocked /24: {p:?}");

    // Unblock: the blocked address is reachable again.
    assert!(dp.block_remove(blocked).expect("remove"));
    let p = ping(&lab.attacker, &in_blocked, &sensor, 3);
    assert_eq!(p.received, 3, "after removal: {p:?}");

    detach(&mut dp, &lab);
    // Detached: blocking has no effect any more (the program no longer sees packets).
    dp.block_insert(blocked).expect("block");
    let p = ping(&lab.attacker, &in_blocked, &sensor, 2);
    assert_eq!(p.received, 2, "after detach: {p:?}");
}

#[test]
fn ipv6_ping_is_blocked_by_a_slash_64() {
    if !(require_root() && require_tool("ping") && require_tool("timeout")) {
        return;
    }
    let lab = NetnsPair::new("v6");
    let _inside = lab.enter_sensor();
    let mut dp = load_small();
    attach_driver(&mut dp, &lab);
    let [_, in_blocked, elsewhere] = ATTACKER_V6.map(|a| a.to_string());
    let sensor = SENSOR_V6.to_string();

    // Warm neighbour discovery from both addresses before blocking, so the sensor already knows the
    // attacker's MAC and never needs a neighbour advertisement that the block would drop.
    for from in [&in_blocked, &elsewhere] {
        let p = ping(&lab.attacker, from, &sensor, 3);
        assert_eq!(p.received, 3, "ping -6 from {from}: {p:?}");
    }
    let blocked: IpNet = "fd00:213:66::/64".parse().unwrap();
    dp.block_insert(blocked).expect("block");
    let p = ping(&lab.attacker, &in_blocked, &sensor, 3);
    assert_eq!(p.received, 0, "blocked /64: {p:?}");
    assert!(dp.block_get(blocked).unwrap().unwrap().hits >= 3);
    assert!(counters(&dp).get(Counter::DropBlocklistV6) >= 3);
    let p = ping(&lab.attacker, &elsewhere, &sensor, 3);
    assert_eq!(p.received, 3, "outside the /64: {p:?}");
    detach(&mut dp, &lab);
}

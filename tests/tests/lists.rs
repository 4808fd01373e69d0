//! Blocklist and allowlist verdicts, hit counters and the global pass/drop accounting, through
//! BPF_PROG_TEST_RUN. Each test loads its own datapath so its counters start at zero.

use netguard_common::{Counter, event_kind, tcp_flags as tf};
use netguard_tests::fixtures::{
    ATT, SEN, SEN6, XDP_DROP, XDP_PASS, counters, flows, key_v4, net, nonzero, run, setup, tcp,
};
use netguard_tests::frames::{FrameSpec, L4};
use std::net::{Ipv4Addr, Ipv6Addr};

#[test]
fn blocklist_v4_drops_only_inside_the_prefix() {
    let Some(mut dp) = setup() else { return };
    let blocked = net("10.213.66.0/24");
    dp.block_insert(blocked).expect("insert");
    let inside = Ipv4Addr::new(10, 213, 66, 7);
    let f = FrameSpec::v4(inside, SEN, tcp(40010, 80, tf::SYN as u8)).build();
    for _ in 0..3 {
        assert_eq!(run(&dp, &f.bytes), XDP_DROP);
    }
    let v = dp.block_get(blocked).expect("get").expect("entry exists");
    assert_eq!(v.hits, 3);
    assert!(v.last_hit_ns > 0);
    let listed = dp.block_list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].0, listed[0].1.hits), (blocked, 3));
    let c = counters(&dp);
    assert_eq!(c.get(Counter::DropBlocklistV4), 3, "{:?}", nonzero(&c));
    assert_eq!(c.get(Counter::DropPackets), 3);
    assert_eq!(c.get(Counter::DropBytes), 3 * f.len() as u64);
    assert!(
        flows(&dp).is_empty(),
        "dropped packets must not enter the flow table"
    );
    // No NEW_FLOW for a dropped source, and one BLOCK_HIT for the three drops: the entry had been
    // quiet, and the next two fall inside BLOCK_HIT_EVENT_GAP_NS (1 s; the runs take microseconds).
    let ev = dp.drain_events(16).expect("drain");
    assert_eq!(ev.len(), 1, "exactly one BLOCK_HIT event: {ev:?}");
    assert_eq!(ev[0].kind, event_kind::BLOCK_HIT);
    assert_eq!(ev[0].key, key_v4(inside, SEN, 40010, 80, 6));
    assert_eq!(
        (ev[0].tcp_flags, ev[0].packet_len as usize),
        (tf::SYN, f.len())
    );

    // An address in the next /24: passes.
    let outside = FrameSpec::v4(Ipv4Addr::new(10, 213, 67, 7), SEN, tcp(40010, 80, 2)).build();
    assert_eq!(run(&dp, &outside.bytes), XDP_PASS);
    assert_eq!(dp.block_get(blocked).unwrap().unwrap().hits, 3);

    // Removed: the same source passes again; removing twice reports that nothing was there.
    assert!(dp.block_remove(blocked).expect("remove"));
    assert!(!dp.block_remove(blocked).expect("remove again"));
    assert_eq!(dp.block_get(blocked).expect("get"), None);
    assert_eq!(run(&dp, &f.bytes), XDP_PASS);
}

#[test]
fn longest_prefix_gets_the_hit_and_allowlist_beats_any_length() {
    let Some(mut dp) = setup() else { return };
    // A host entry and its covering /24 (an implementation may keep them in different maps): each
    // packet is charged to the longest match only.
    let host = net("10.213.66.7/32");
    let wide = net("10.213.66.0/24");
    assert_eq!(dp.block_insert_many(&[host, wide]).expect("insert"), 2);
    let from = |a: [u8; 4]| FrameSpec::v4(Ipv4Addr::from(a), SEN, tcp(1, 80, 2)).build();
    assert_eq!(run(&dp, &from([10, 213, 66, 7]).bytes), XDP_DROP);
    assert_eq!(run(&dp, &from([10, 213, 66, 8]).bytes), XDP_DROP);
    assert_eq!(run(&dp, &from([10, 213, 66, 8]).bytes), XDP_DROP);
    assert_eq!(dp.block_get(host).unwrap().unwrap().hits, 1);
    assert_eq!(dp.block_get(wide).unwrap().unwrap().hits, 2);

    // Removing the host entry leaves the /24 in charge of .7.
    assert!(dp.block_remove(host).expect("remove"));
    assert_eq!(run(&dp, &from([10, 213, 66, 7]).bytes), XDP_DROP);
    assert_eq!(dp.block_get(wide).unwrap().unwrap().hits, 3);

    // A shorter allowlist prefix still overrides a longer blocklist entry.
    dp.block_insert(host).expect("insert host again");
    dp.allow_insert(net("10.213.0.0/16")).expect("allow");
    assert_eq!(run(&dp, &from([10, 213, 66, 7]).bytes), XDP_PASS);
    assert_eq!(counters(&dp).get(Counter::AllowlistOverride), 1);
    assert_eq!(dp.block_get(host).unwrap().unwrap().hits, 0);
}

#[test]
fn blocklist_v6_drops_a_slash_64() {
    let Some(mut dp) = setup() else { return };
    let blocked = net("fd00:213:66::/64");
    dp.block_insert(blocked).expect("insert");
    let inside: Ipv6Addr = "fd00:213:66::7".parse().unwrap();
    let outside: Ipv6Addr = "fd00:213:66:1::7".parse().unwrap();
    let f = FrameSpec::v6(
        inside,
        SEN6,
        L4::Udp {
            sport: 1,
            dport: 53,
        },
    )
    .build();
    assert_eq!(run(&dp, &f.bytes), XDP_DROP);
    let g = FrameSpec::v6(
        outside,
        SEN6,
        L4::Udp {
            sport: 1,
            dport: 53,
        },
    )
    .build();
    assert_eq!(run(&dp, &g.bytes), XDP_PASS);
    assert_eq!(dp.block_get(blocked).unwrap().unwrap().hits, 1);
    let c = counters(&dp);
    assert_eq!(
        (
            c.get(Counter::DropBlocklistV6),
            c.get(Counter::DropBlocklistV4)
        ),
        (1, 0)
    );
    // A v4 entry never matches v6 traffic and vice versa.
    dp.block_insert(net("10.213.0.0/16")).expect("insert v4");
    assert_eq!(run(&dp, &g.bytes), XDP_PASS);
}

#[test]
fn allowlist_overrides_blocklist_until_removed() {
    let Some(mut dp) = setup() else { return };
    let blocked = net("10.213.66.0/24");
    let allowed = net("10.213.66.7/32");
    dp.block_insert(blocked).expect("block");
    dp.allow_insert(allowed).expect("allow");
    let friend = FrameSpec::v4(Ipv4Addr::new(10, 213, 66, 7), SEN, tcp(1, 22, 2)).build();
    let neighbour = FrameSpec::v4(Ipv4Addr::new(10, 213, 66, 8), SEN, tcp(1, 22, 2)).build();

    assert_eq!(run(&dp, &friend.bytes), XDP_PASS);
    assert_eq!(
        run(&dp, &neighbour.bytes),
        XDP_DROP,
        "allowlist covers only .7"
    );
    let c = counters(&dp);
    assert_eq!(c.get(Counter::AllowlistOverride), 1, "{:?}", nonzero(&c));
    assert_eq!(dp.allow_get(allowed).unwrap().unwrap().overrides, 1);
    assert_eq!(dp.allow_list().unwrap().len(), 1);
    // BlockValue::hits counts packets the entry dropped; the overridden one was not dropped.
    assert_eq!(dp.block_get(blocked).unwrap().unwrap().hits, 1);

    assert!(dp.allow_remove(allowed).expect("unallow"));
    assert_eq!(run(&dp, &friend.bytes), XDP_DROP);
    assert_eq!(dp.block_get(blocked).unwrap().unwrap().hits, 2);
    assert_eq!(counters(&dp).get(Counter::AllowlistOverride), 1);

    // IPv6: same rule.
    dp.block_insert(net("fd00:213:66::/48")).expect("block v6");
    dp.allow_insert(net("fd00:213:66:1::/64"))
        .expect("allow v6");
    let six: Ipv6Addr = "fd00:213:66:1::9".parse().unwrap();
    let f6 = FrameSpec::v6(six, SEN6, L4::Udp { sport: 1, dport: 2 }).build();
    assert_eq!(run(&dp, &f6.bytes), XDP_PASS);
    assert_eq!(counters(&dp).get(Counter::AllowlistOverride), 2);
}

#[test]
fn pass_and_drop_counters_match_what_was_sent() {
    let Some(mut dp) = setup() else { return };
    dp.block_insert(net("10.213.66.0/24")).expect("block");
    let (mut pass, mut drop) = ((0u64, 0u64), (0u64, 0u64));
    for (i, size) in [0usize, 1, 60, 500, 1400].into_iter().enumerate() {
        let p = FrameSpec::v4(
            ATT,
            SEN,
            L4::Udp {
                sport: 2000 + i as u16,
                dport: 53,
            },
        )
        .payload(&vec![0xab; size])
        .build();
        assert_eq!(run(&dp, &p.bytes), XDP_PASS);
        pass = (pass.0 + 1, pass.1 + p.len() as u64);
        if i % 2 == 0 {
            let d = FrameSpec::v4(
                Ipv4Addr::new(10, 213, 66, 9),
                SEN,
                L4::Udp {
                    sport: 1,
                    dport: 53,
                },
            )
            .payload(&vec![0xcd; size])
            .build();
            assert_eq!(run(&dp, &d.bytes), XDP_DROP);
            drop = (drop.0 + 1, drop.1 + d.len() as u64);
        }
    }
    let c = counters(&dp);
    assert_eq!(
        (c.get(Counter::PassPackets), c.get(Counter::PassBytes)),
        pass,
        "{:?}",
        nonzero(&c)
    );
    assert_eq!(
        (c.get(Counter::DropPackets), c.get(Counter::DropBytes)),
        drop
    );
    assert_eq!(c.get(Counter::FlowsCreated), 5);
}

/// A packet whose IP header is valid but whose transport header is cut short still has a known
/// source: the blocklist must apply to it, or a blocked source could slip through by sending
/// truncated TCP headers. The parse error is still counted, and the same truncation from an unblocked
/// source passes.
#[test]
fn truncated_l4_from_a_blocked_source_is_still_dropped() {
    let Some(mut dp) = setup() else { return };
    dp.block_insert(net("10.213.66.0/24")).expect("insert");
    let blocked = FrameSpec::v4(
        Ipv4Addr::new(10, 213, 66, 9),
        SEN,
        tcp(40020, 22, tf::SYN as u8),
    )
    .build();
    let cut = blocked.truncated(netguard_tests::frames::Layer::L4, 10);
    assert_eq!(
        run(&dp, &cut),
        XDP_DROP,
        "a blocked source bypassed the blocklist by truncating TCP"
    );
    let free = FrameSpec::v4(
        Ipv4Addr::new(10, 213, 67, 9),
        SEN,
        tcp(40020, 22, tf::SYN as u8),
    )
    .build();
    assert_eq!(
        run(&dp, &free.truncated(netguard_tests::frames::Layer::L4, 10)),
        XDP_PASS
    );
    let c = counters(&dp);
    assert_eq!(c.get(Counter::ParseTruncatedL4), 2, "{:?}", nonzero(&c));
    assert_eq!(c.get(Counter::DropBlocklistV4), 1);
    assert!(
        flows(&dp).is_empty(),
        "a packet without ports must not invent a flow"
    );
}

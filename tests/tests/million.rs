//! One million blocklist entries: the size the issue asks the IPv4 trie to hold.
//!
//! Insertion time is printed, not asserted (timings on a shared 2-core machine are not a test); what
//! is asserted is that every entry went in and that the loaded trie still gives exact verdicts and
//! hit counts.

use netguard_common::Counter;
use netguard_tests::fixtures::{XDP_DROP, XDP_PASS, counters, load, run, small_config};
use netguard_tests::frames::{FrameSpec, L4};
use netguard_tests::netns::require_root;
use netguard_tests::prefixes::{
    HOSTS, MILLION, first_uncovered, inside_but_not_host, longest_match, million_v4,
};
use netguard_user::datapath::DatapathConfig;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

const SENSOR: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);

fn frame_from(src: IpAddr) -> Vec<u8> {
    let IpAddr::V4(src) = src else {
        unreachable!("the million set is IPv4")
    };
    FrameSpec::v4(
        src,
        SENSOR,
        L4::Udp {
            sport: 999,
            dport: 53,
        },
    )
    .build()
    .bytes
}

#[test]
fn one_million_blocklist_entries() {
    if !require_root() {
        return;
    }
    let nets = million_v4();
    // Only the v4 trie is big; flows and the rest stay small so the test measures the trie.
    let cfg = DatapathConfig {
        blocklist_v4_max: MILLION as u32 + 1024,
        ..small_config()
    };
    let mut dp = load(&cfg);

    let t = Instant::now();
    let inserted = dp.block_insert_many(&nets).expect("block_insert_many");
    let took = t.elapsed();
    println!(
        "inserted {inserted} blocklist entries in {:.2?} ({:.0} entries/s)",
        took,
        inserted as f64 / took.as_secs_f64()
    );
    assert_eq!(inserted, MILLION);

    // Sample every 997th entry (a prime stride touches all three prefix lengths) instead of listing
    // a million entries back.
    for n in nets.iter().step_by(997) {
        let v = dp.block_get(*n).expect("block_get");
        assert_eq!(v.map(|v| v.hits), Some(0), "{n} missing after insert");
    }
    // The last entries (the /16s) too: a batch that stopped early would lose the tail first.
    for n in &nets[MILLION - 10..] {
        assert!(
            dp.block_get(*n).expect("block_get").is_some(),
            "{n} missing"
        );
    }

    // A host entry: its own /32 is the longest match.
    let host = nets[HOSTS / 2];
    // Present first, so a failure below means "stored but not matched", not "never stored".
    assert_eq!(
        dp.block_get(host).expect("block_get").map(|v| v.hits),
        Some(0)
    );
    assert_eq!(run(&dp, &frame_from(host.addr())), XDP_DROP);
    assert_eq!(dp.block_get(host).unwrap().unwrap().hits, 1);

    // An address inside a /16 that is no /32 entry: the hit goes to the longest covering prefix.
    let wide = nets[MILLION - 1];
    let addr = inside_but_not_host(&nets, wide);
    let best = longest_match(&nets, addr).expect("covered");
    assert_eq!(run(&dp, &frame_from(addr)), XDP_DROP);
    assert_eq!(
        dp.block_get(best).unwrap().unwrap().hits,
        1,
        "hit on {best} for {addr}"
    );

    // An address in no entry at all passes.
    let free = first_uncovered(&nets, Ipv4Addr::new(10, 213, 200, 1));
    assert_eq!(
        run(&dp, &frame_from(IpAddr::V4(free))),
        XDP_PASS,
        "{free} is in no entry"
    );

    let c = counters(&dp);
    assert_eq!(c.get(Counter::DropBlocklistV4), 2);
    assert_eq!(c.get(Counter::PassPackets), 1);
}

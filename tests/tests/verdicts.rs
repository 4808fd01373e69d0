//! Parsing verdicts and flow accounting on crafted frames, through BPF_PROG_TEST_RUN (no interface
//! needed): what each header layout must produce in the flow table, the counters and the ring buffer.
//! Blocklist/allowlist verdicts are in `lists.rs`.
//!
//! Each test loads its own datapath, so every counter starts at zero and exact equalities hold even
//! though libtest runs the tests in parallel.

use netguard_common::{Counter, FlowStats, event_kind, tcp_flags as tf};
use netguard_tests::fixtures::{
    ATT, ATT6, SEN, SEN6, XDP_PASS, counters, flow, flows, key_v4, key_v6, nonzero, run, setup, tcp,
};
use netguard_tests::frames::{
    ETH_P_ARP, Ext, FrameSpec, L4, Layer, Vlan, arp_body, fake_tcp_header,
};
use netguard_user::datapath::Datapath;

/// The single counter that must have moved for a parse problem, with every other parse counter at 0.
fn assert_only_parse_error(dp: &Datapath, which: Counter, expected: u64) {
    let c = counters(dp);
    for p in Counter::PARSE_ERRORS {
        let want = if p == which { expected } else { 0 };
        assert_eq!(c.get(p), want, "{}: counters {:?}", p.name(), nonzero(&c));
    }
}

#[test]
fn tcp_syn_v4_creates_flow_and_exactly_one_event() {
    let Some(mut dp) = setup() else { return };
    let syn = FrameSpec::v4(ATT, SEN, tcp(40000, 80, tf::SYN as u8)).build();
    assert_eq!(run(&dp, &syn.bytes), XDP_PASS);

    let key = key_v4(ATT, SEN, 40000, 80, 6);
    let s = flow(&dp, &key);
    assert_eq!(
        FlowStats {
            first_seen_ns: 0,
            last_seen_ns: 0,
            ..s
        },
        FlowStats {
            packets: 1,
            bytes: syn.len() as u64,
            syn: 1,
            tcp_flags: tf::SYN,
            ..FlowStats::default()
        }
    );
    assert!(
        s.first_seen_ns > 0 && s.last_seen_ns >= s.first_seen_ns,
        "{s:?}"
    );

    let ev = dp.drain_events(16).expect("drain");
    assert_eq!(ev.len(), 1, "one NEW_FLOW event: {ev:?}");
    assert_eq!(ev[0].kind, event_kind::NEW_FLOW);
    assert_eq!(ev[0].key, key);
    assert_eq!(ev[0].tcp_flags, tf::SYN);
    assert_eq!(ev[0].packet_len as usize, syn.len());

    // The same flow again: counted, but no second event (events are per flow, not per packet).
    let ack = FrameSpec::v4(ATT, SEN, tcp(40000, 80, tf::ACK as u8))
        .payload(b"GET /")
        .build();
    assert_eq!(run(&dp, &ack.bytes), XDP_PASS);
    assert!(dp.drain_events(16).expect("drain").is_empty());
    let s = flow(&dp, &key);
    assert_eq!((s.packets, s.bytes), (2, (syn.len() + ack.len()) as u64));
    assert_eq!((s.syn, s.ack, s.tcp_flags), (1, 1, tf::SYN | tf::ACK));

    let c = counters(&dp);
    assert_eq!(c.get(Counter::PassPackets), 2, "{:?}", nonzero(&c));
    assert_eq!(c.get(Counter::PassBytes), (syn.len() + ack.len()) as u64);
    assert_eq!(c.get(Counter::FlowsCreated), 1);
    assert_eq!(c.get(Counter::EventsSent), 1);
    assert_eq!(c.get(Counter::DropPackets), 0);
    assert_eq!(flows(&dp).len(), 1);
}

#[test]
fn tcp_flag_classes_are_counted_per_flow() {
    let Some(dp) = setup() else { return };
    // A whole handshake-to-reset on one 5-tuple; each class is defined in FlowStats' docs.
    let seq = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04];
    for f in seq {
        let fr = FrameSpec::v4(ATT, SEN, tcp(40001, 22, f)).build();
        assert_eq!(run(&dp, &fr.bytes), XDP_PASS);
    }
    let s = flow(&dp, &key_v4(ATT, SEN, 40001, 22, 6));
    assert_eq!(s.packets, 6);
    assert_eq!(s.syn, 1, "SYN without ACK");
    assert_eq!(s.syn_ack, 1);
    assert_eq!(s.ack, 3, "ACK, PSH|ACK, FIN|ACK carry ACK without SYN");
    assert_eq!((s.rst, s.fin), (1, 1));
    assert_eq!(s.tcp_flags, 0x1f);
}

#[test]
fn ipv6_tcp_and_udp_flows() {
    let Some(dp) = setup() else { return };
    let t = FrameSpec::v6(ATT6, SEN6, tcp(40002, 443, tf::SYN as u8)).build();
    let u = FrameSpec::v6(
        ATT6,
        SEN6,
        L4::Udp {
            sport: 5353,
            dport: 53,
        },
    )
    .payload(&[7; 30])
    .build();
    assert_eq!(run(&dp, &t.bytes), XDP_PASS);
    assert_eq!(run(&dp, &u.bytes), XDP_PASS);
    let st = flow(&dp, &key_v6(ATT6, SEN6, 40002, 443, 6));
    assert_eq!((st.packets, st.bytes, st.syn), (1, t.len() as u64, 1));
    let su = flow(&dp, &key_v6(ATT6, SEN6, 5353, 53, 17));
    assert_eq!((su.packets, su.bytes, su.tcp_flags), (1, u.len() as u64, 0));
    assert_eq!(flows(&dp).len(), 2);
}

#[test]
fn vlan_single_and_double_tags_are_parsed_through() {
    let Some(dp) = setup() else { return };
    let one = FrameSpec::v4(ATT, SEN, tcp(1001, 80, 0x02))
        .vlan(Vlan::q(100))
        .build();
    assert_eq!(run(&dp, &one.bytes), XDP_PASS);
    let s = flow(&dp, &key_v4(ATT, SEN, 1001, 80, 6));
    assert_eq!((s.packets, s.bytes, s.syn), (1, one.len() as u64, 1));
    assert_eq!(counters(&dp).get(Counter::Vlan), 1);

    // QinQ: 802.1ad outer tag, 802.1Q inner tag, IPv6 inside.
    let two = FrameSpec::v6(
        ATT6,
        SEN6,
        L4::Udp {
            sport: 1002,
            dport: 53,
        },
    )
    .vlan(Vlan::ad(200))
    .vlan(Vlan::q(100))
    .build();
    assert_eq!(run(&dp, &two.bytes), XDP_PASS);
    flow(&dp, &key_v6(ATT6, SEN6, 1002, 53, 17));
    let c = counters(&dp);
    assert_eq!(
        c.get(Counter::Vlan),
        2,
        "one per tagged frame: {:?}",
        nonzero(&c)
    );
    assert_eq!(c.get(Counter::NonIp), 0);
}

#[test]
fn ipv4_options_move_the_transport_header() {
    let Some(dp) = setup() else { return };
    // Record Route (11 bytes, padded to 12): IHL 8. A parser that assumed 20 bytes would read the
    // option bytes 07 0b / 04 01 as ports.
    let mut spec = FrameSpec::v4(ATT, SEN, tcp(40003, 8080, tf::SYN as u8));
    spec.ipv4_mut().options = vec![7, 11, 4, 10, 213, 1, 2, 0, 0, 0, 0];
    let f = spec.build();
    assert_eq!(run(&dp, &f.bytes), XDP_PASS);
    let s = flow(&dp, &key_v4(ATT, SEN, 40003, 8080, 6));
    assert_eq!((s.syn, s.tcp_flags), (1, tf::SYN));
    assert_only_parse_error(&dp, Counter::ParseBadIpHeader, 0);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let Some(dp) = setup() else { return };
    // Non-minimal lengths (16-byte hop-by-hop, 16-byte routing) so that length arithmetic, not a
    // fixed 8-byte skip, is what finds the ports.
    let mut spec = FrameSpec::v6(ATT6, SEN6, tcp(40004, 22, tf::SYN as u8));
    spec.ipv6_mut().ext = vec![
        Ext::HopByHop { len8: 1 },
        Ext::DestOpts { len8: 0 },
        Ext::Routing { len8: 1 },
    ];
    assert_eq!(run(&dp, &spec.build().bytes), XDP_PASS);
    assert_eq!(flow(&dp, &key_v6(ATT6, SEN6, 40004, 22, 6)).syn, 1);

    // AH counts its length in 4-byte words (minus 2), unlike the others.
    let mut spec = FrameSpec::v6(
        ATT6,
        SEN6,
        L4::Udp {
            sport: 40005,
            dport: 500,
        },
    );
    spec.ipv6_mut().ext = vec![Ext::Ah { icv_words: 3 }, Ext::DestOpts { len8: 2 }];
    assert_eq!(run(&dp, &spec.build().bytes), XDP_PASS);
    flow(&dp, &key_v6(ATT6, SEN6, 40005, 500, 17));
    assert_only_parse_error(&dp, Counter::ParseIpv6ExtLimit, 0);
}

#[test]
fn ipv6_extension_header_limit() {
    let Some(dp) = setup() else { return };
    let chain = |n: usize| {
        let mut spec = FrameSpec::v6(
            ATT6,
            SEN6,
            L4::Udp {
                sport: 40006,
                dport: 53,
            },
        );
        spec.ipv6_mut().ext = (0..n).map(|_| Ext::DestOpts { len8: 0 }).collect();
        spec.build()
    };
    // Exactly IPV6_MAX_EXT_HEADERS (6) is still parsed ...
    assert_eq!(netguard_common::IPV6_MAX_EXT_HEADERS, 6);
    // (the parse counters are checked first: they say why a missing flow is missing).
    assert_eq!(run(&dp, &chain(6).bytes), XDP_PASS);
    assert_only_parse_error(&dp, Counter::ParseIpv6ExtLimit, 0);
    flow(&dp, &key_v6(ATT6, SEN6, 40006, 53, 17));
    // ... one more is a parse error, passed untouched.
    assert_eq!(run(&dp, &chain(7).bytes), XDP_PASS);
    assert_only_parse_error(&dp, Counter::ParseIpv6ExtLimit, 1);
    assert_eq!(counters(&dp).get(Counter::PassPackets), 2);
}

#[test]
fn ipv4_non_first_fragments_carry_no_ports() {
    let Some(dp) = setup() else { return };
    // Payloads that look exactly like a TCP SYN 40007 -> 80: reading them as a header would create a
    // flow with those ports and count a SYN.
    let frag = |offset: u16, more: bool| {
        let mut spec =
            FrameSpec::v4(ATT, SEN, tcp(0, 0, 0)).raw_payload(6, &fake_tcp_header(40007, 80));
        spec.ipv4_mut().frag_offset = offset;
        spec.ipv4_mut().more_fragments = more;
        spec.build()
    };
    assert_eq!(run(&dp, &frag(185, true).bytes), XDP_PASS); // middle fragment
    assert_eq!(run(&dp, &frag(370, false).bytes), XDP_PASS); // last fragment
    let s = flow(&dp, &key_v4(ATT, SEN, 0, 0, 6));
    assert_eq!((s.packets, s.fragments, s.syn, s.tcp_flags), (2, 2, 0, 0));
    assert_eq!(counters(&dp).get(Counter::Fragments), 2);
    assert_eq!(
        flows(&dp).len(),
        1,
        "no flow with the fake ports: {:?}",
        flows(&dp)
    );
}

#[test]
fn ipv4_first_fragment_is_parsed_normally() {
    let Some(dp) = setup() else { return };
    let mut spec = FrameSpec::v4(ATT, SEN, tcp(40008, 80, tf::SYN as u8)).payload(&[0; 64]);
    spec.ipv4_mut().more_fragments = true; // MF set, offset 0: the transport header is here.
    assert_eq!(run(&dp, &spec.build().bytes), XDP_PASS);
    let s = flow(&dp, &key_v4(ATT, SEN, 40008, 80, 6));
    assert_eq!((s.syn, s.fragments), (1, 0));
    assert_eq!(counters(&dp).get(Counter::Fragments), 0);
}

#[test]
fn ipv6_fragments_first_parsed_others_portless() {
    let Some(dp) = setup() else { return };
    let mut first = FrameSpec::v6(ATT6, SEN6, tcp(40009, 80, tf::SYN as u8)).payload(&[0; 64]);
    first.ipv6_mut().ext = vec![Ext::Fragment {
        offset: 0,
        more: true,
        ident: 9,
    }];
    assert_eq!(run(&dp, &first.build().bytes), XDP_PASS);
    let s = flow(&dp, &key_v6(ATT6, SEN6, 40009, 80, 6));
    assert_eq!((s.syn, s.fragments), (1, 0));
    assert_eq!(counters(&dp).get(Counter::Fragments), 0);

    let mut later =
        FrameSpec::v6(ATT6, SEN6, tcp(0, 0, 0)).raw_payload(6, &fake_tcp_header(40009, 80));
    later.ipv6_mut().ext = vec![
        Ext::HopByHop { len8: 0 },
        Ext::Fragment {
            offset: 9,
            more: false,
            ident: 9,
        },
    ];
    assert_eq!(run(&dp, &later.build().bytes), XDP_PASS);
    let s = flow(&dp, &key_v6(ATT6, SEN6, 0, 0, 6));
    assert_eq!((s.packets, s.fragments, s.syn), (1, 1, 0));
    assert_eq!(counters(&dp).get(Counter::Fragments), 1);
}

#[test]
fn truncated_frames_pass_with_the_right_counter() {
    let Some(dp) = setup() else { return };
    // L2: a VLAN tag whose inner EtherType is missing (BPF_PROG_TEST_RUN rejects frames under 14
    // bytes, so a short Ethernet header cannot be tested; a cut tag is the L2 case that can happen).
    let tagged = FrameSpec::v4(ATT, SEN, tcp(1, 2, 2))
        .vlan(Vlan::q(7))
        .build();
    assert_eq!(run(&dp, &tagged.truncated(Layer::L2, 4)), XDP_PASS);
    assert_only_parse_error(&dp, Counter::ParseTruncatedL2, 1);

    // L3: IPv4 cut inside its fixed header, IPv4 cut inside its options, IPv6 cut inside its header.
    let v4 = FrameSpec::v4(ATT, SEN, tcp(1, 2, 2)).build();
    let mut opt = FrameSpec::v4(ATT, SEN, tcp(1, 2, 2));
    opt.ipv4_mut().options = vec![1; 12];
    let opt = opt.build();
    let v6 = FrameSpec::v6(ATT6, SEN6, tcp(1, 2, 2)).build();
    for cut in [
        v4.truncated(Layer::L3, 10),
        opt.truncated(Layer::L3, 24),
        v6.truncated(Layer::L3, 30),
    ] {
        assert_eq!(run(&dp, &cut), XDP_PASS);
    }
    assert_eq!(counters(&dp).get(Counter::ParseTruncatedL3), 3);

    // L4: TCP without its flags byte, UDP with half a header, ICMP with one byte.
    let udp = FrameSpec::v6(ATT6, SEN6, L4::Udp { sport: 1, dport: 2 }).build();
    let icmp = FrameSpec::v4(ATT, SEN, L4::Icmp { ty: 8, code: 0 }).build();
    for cut in [
        v4.truncated(Layer::L4, 12),
        udp.truncated(Layer::L4, 6),
        icmp.truncated(Layer::L4, 1),
    ] {
        assert_eq!(run(&dp, &cut), XDP_PASS);
    }
    let c = counters(&dp);
    assert_eq!(c.get(Counter::ParseTruncatedL4), 3, "{:?}", nonzero(&c));
    assert_eq!(c.get(Counter::ParseTruncatedL2), 1);
    assert_eq!(c.get(Counter::PassPackets), 7);
    assert_eq!(c.get(Counter::DropPackets), 0);
}

#[test]
fn non_ip_and_bad_ihl_pass() {
    let Some(dp) = setup() else { return };
    let arp = FrameSpec::other(ETH_P_ARP, arp_body()).build();
    assert_eq!(run(&dp, &arp.bytes), XDP_PASS);
    let c = counters(&dp);
    assert_eq!((c.get(Counter::NonIp), c.get(Counter::PassPackets)), (1, 1));
    assert!(flows(&dp).is_empty(), "non-IP frames are not flows");

    let mut bad = FrameSpec::v4(ATT, SEN, tcp(1, 2, 2));
    bad.ipv4_mut().ihl_override = Some(4); // IHL below the 20-byte minimum
    assert_eq!(run(&dp, &bad.build().bytes), XDP_PASS);
    assert_only_parse_error(&dp, Counter::ParseBadIpHeader, 1);
}

#[test]
fn icmp_type_and_code_become_ports() {
    let Some(dp) = setup() else { return };
    let frames = [
        FrameSpec::v4(ATT, SEN, L4::Icmp { ty: 8, code: 0 }),
        FrameSpec::v4(ATT, SEN, L4::Icmp { ty: 11, code: 1 }),
        FrameSpec::v6(ATT6, SEN6, L4::Icmpv6 { ty: 128, code: 0 }),
        FrameSpec::v6(ATT6, SEN6, L4::Icmpv6 { ty: 1, code: 4 }),
    ];
    for f in &frames {
        assert_eq!(run(&dp, &f.build().bytes), XDP_PASS);
    }
    flow(&dp, &key_v4(ATT, SEN, 8, 0, 1));
    flow(&dp, &key_v4(ATT, SEN, 11, 1, 1));
    flow(&dp, &key_v6(ATT6, SEN6, 128, 0, 58));
    flow(&dp, &key_v6(ATT6, SEN6, 1, 4, 58));
    assert_eq!(flows(&dp).len(), 4);
}

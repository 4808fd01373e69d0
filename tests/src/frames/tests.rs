//! Root-free checks that the builder writes what the datapath tests assume it writes.

use super::*;

const A4: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
const B4: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);

fn a6() -> Ipv6Addr {
    "fd00:213:1::2".parse().unwrap()
}
fn b6() -> Ipv6Addr {
    "fd00:213:1::1".parse().unwrap()
}

fn syn() -> L4 {
    L4::Tcp {
        sport: 40000,
        dport: 80,
        flags: 0x02,
    }
}

#[test]
fn rfc1071_reference_header() {
    // The classic example header (checksum field zeroed) whose checksum is 0xb861.
    let hdr = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(inet_checksum(&hdr, 0), 0xb861);
}

#[test]
fn ipv4_tcp_lengths_and_checksums() {
    let f = FrameSpec::v4(A4, B4, syn()).payload(b"hello").build();
    assert_eq!(f.len(), 14 + 20 + 20 + 5);
    assert_eq!((f.l3_off, f.l4_off), (14, 34));
    assert_eq!(&f.bytes[12..14], &[0x08, 0x00]);
    let ip = &f.bytes[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 45, "total length");
    assert_eq!(ip[9], 6);
    assert_eq!(inet_checksum(ip, 0), 0, "header checksum must verify");
    let tcp = &f.bytes[34..];
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 40000);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 80);
    assert_eq!(tcp[13], 0x02);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&A4.octets());
    pseudo.extend_from_slice(&B4.octets());
    pseudo.extend_from_slice(&[0, 6, 0, tcp.len() as u8]);
    assert_eq!(
        inet_checksum(tcp, sum_words(&pseudo)),
        0,
        "TCP checksum must verify"
    );
}

#[test]
fn ipv4_options_set_ihl_and_move_l4() {
    let mut s = FrameSpec::v4(
        A4,
        B4,
        L4::Udp {
            sport: 53,
            dport: 5353,
        },
    );
    s.ipv4_mut().options = vec![7, 11, 4, 1, 2, 3, 4, 5, 6, 7, 8]; // record route, 11 bytes
    let f = s.build();
    assert_eq!(f.bytes[14], 0x48, "IHL 8 = 20 + 12 option bytes");
    assert_eq!(f.l4_off, 14 + 32);
    assert_eq!(f.bytes[14 + 31], 0, "padded with EOL");
    assert_eq!(inet_checksum(&f.bytes[14..46], 0), 0);
    let udp = &f.bytes[46..];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 53);
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 8, "UDP length");
}

#[test]
fn ipv4_fragment_fields_and_ihl_override() {
    let mut s = FrameSpec::v4(A4, B4, syn()).raw_payload(6, &fake_tcp_header(1, 2));
    s.ipv4_mut().frag_offset = 185;
    s.ipv4_mut().more_fragments = true;
    let f = s.build();
    assert_eq!(u16::from_be_bytes([f.bytes[20], f.bytes[21]]), 0x2000 | 185);
    assert_eq!(f.len(), 14 + 20 + 20);
    let mut s = FrameSpec::v4(A4, B4, syn());
    s.ipv4_mut().ihl_override = Some(4);
    assert_eq!(s.build().bytes[14], 0x44);
}

#[test]
fn vlan_tags_precede_ethertype() {
    let f = FrameSpec::v4(A4, B4, syn())
        .vlan(Vlan::ad(200))
        .vlan(Vlan::q(100))
        .build();
    assert_eq!(f.l3_off, 22);
    assert_eq!(
        &f.bytes[12..22],
        &[0x88, 0xa8, 0, 200, 0x81, 0x00, 0, 100, 0x08, 0x00]
    );
    assert_eq!(f.len(), 22 + 40);
}

#[test]
fn ipv6_extension_chain_links_and_lengths() {
    let mut s = FrameSpec::v6(a6(), b6(), L4::Udp { sport: 1, dport: 2 });
    s.ipv6_mut().ext = vec![
        Ext::HopByHop { len8: 1 },
        Ext::Routing { len8: 0 },
        Ext::Ah { icv_words: 1 },
        Ext::DestOpts { len8: 0 },
    ];
    let f = s.build();
    let ip = &f.bytes[14..];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(ip[6], nh::HOP_BY_HOP, "first next-header");
    let mut off = 40;
    let mut expect_next = [nh::ROUTING, nh::AH, nh::DEST_OPTS, 17].iter();
    for len in [16, 8, 16, 8] {
        assert_eq!(ip[off], *expect_next.next().unwrap());
        off += len;
    }
    assert_eq!(f.l4_off, 14 + off);
    assert_eq!(
        u16::from_be_bytes([ip[4], ip[5]]) as usize,
        off - 40 + 8,
        "payload length"
    );
    // AH's length field counts 32-bit words minus 2.
    assert_eq!(ip[40 + 16 + 8 + 1], 2);
}

#[test]
fn ipv6_fragment_header_and_icmpv6_checksum() {
    let mut s = FrameSpec::v6(a6(), b6(), syn()).raw_payload(6, &fake_tcp_header(1, 2));
    s.ipv6_mut().ext = vec![Ext::Fragment {
        offset: 100,
        more: false,
        ident: 7,
    }];
    let f = s.build();
    assert_eq!(f.bytes[14 + 6], nh::FRAGMENT);
    assert_eq!(f.bytes[54], 6);
    assert_eq!(u16::from_be_bytes([f.bytes[56], f.bytes[57]]), 100 << 3);

    let f = FrameSpec::v6(a6(), b6(), L4::Icmpv6 { ty: 128, code: 0 }).build();
    let msg = &f.bytes[f.l4_off..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&a6().octets());
    pseudo.extend_from_slice(&b6().octets());
    pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    assert_eq!(inet_checksum(msg, sum_words(&pseudo)), 0);
}

#[test]
fn truncation_cuts_inside_the_named_layer() {
    let f = FrameSpec::v4(A4, B4, syn()).vlan(Vlan::q(5)).build();
    assert_eq!(
        f.truncated(Layer::L2, 4).len(),
        16,
        "TPID + TCI, no inner EtherType"
    );
    assert_eq!(f.truncated(Layer::L3, 10).len(), 18 + 10);
    assert_eq!(f.truncated(Layer::L4, 12).len(), 18 + 20 + 12);
    assert_eq!(f.truncated(Layer::L4, 1000), f.bytes);
}

#[test]
fn non_ip_frame() {
    let f = FrameSpec::other(ETH_P_ARP, arp_body()).build();
    assert_eq!(f.len(), 14 + 28);
    assert_eq!(&f.bytes[12..14], &[0x08, 0x06]);
}

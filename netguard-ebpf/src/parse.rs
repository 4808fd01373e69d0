//! Header parsing for the XDP datapath.
//!
//! Every read is bounds-checked against `data_end` right before it, in the shape the verifier can
//! follow. Offsets only grow by amounts bounded by a header field (IHL <= 15, extension header length
//! <= 255), so the verifier can prove every packet pointer stays within 64 KiB of `data`.
//!
//! Fields are read as bytes and assembled big-endian by hand instead of casting packet memory to
//! network-types' enums: an EtherType or protocol value that is not a variant would be undefined
//! behaviour, and an attacker chooses those bytes.

use aya_ebpf::programs::XdpContext;
use netguard_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, IPV6_MAX_EXT_HEADERS, proto};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr, udp::UdpHdr};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_TAG_LEN: usize = 4;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
const ICMP_HDR_LEN: usize = 4;

/// What the parser learned about one packet. Filled in place so that the 40-byte key is written once,
/// straight into the stack slot that the flow-map lookup uses.
#[repr(C)]
pub struct Packet {
    pub key: FlowKey,
    /// TCP flags byte (0 for anything that is not a TCP header we could read).
    pub tcp_flags: u32,
    pub vlan: bool,
    pub fragment: bool,
    /// The IP header was valid, so `key.src` is the real source even if a later layer failed to
    /// parse: the blocklist still applies to such packets.
    pub src_known: bool,
}

impl Packet {
    /// Zeroes `slot` in place and returns it as a packet. Explicit 8-byte volatile stores, and no move
    /// afterwards: a plain zero initialiser, or moving the zeroed value, is merged by LLVM into a call
    /// to the BPF linker's memset, a byte-at-a-time loop that cost more per packet than parsing and
    /// both map lookups together.
    #[inline(always)]
    pub fn zeroed_in(slot: &mut core::mem::MaybeUninit<Packet>) -> &mut Packet {
        const WORDS: usize = size_of::<Packet>() / 8;
        let words = slot.as_mut_ptr().cast::<u64>();
        let mut i = 0;
        while i < WORDS {
            // SAFETY: `words` covers the whole Packet (its size is a multiple of 8, checked below).
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
            i += 1;
        }
        // SAFETY: every byte is zero, a valid value for every field (integers, arrays and bools).
        unsafe { slot.assume_init_mut() }
    }
}

const _: () = assert!(size_of::<Packet>() % 8 == 0 && align_of::<Packet>() == 8);

/// Parse result. `NonIp` is passed untouched. `Error` is passed unless the IP header was valid and its
/// source is blocklisted.
pub enum Parsed {
    Ip,
    NonIp,
    Error(Counter),
}

/// A bounds-checked view of `N` bytes at `off`. The check is written against `data_end` directly so the
/// verifier marks the returned range as readable.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<&[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    // SAFETY: the range [start+off, start+off+N) lies inside the packet, checked just above.
    Some(unsafe { &*((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Parsed {
    let Some(eth) = bytes::<{ EthHdr::LEN }>(ctx, 0) else {
        return Parsed::Error(Counter::ParseTruncatedL2);
    };
    let mut ethertype = be16(eth[12], eth[13]);
    let mut off = EthHdr::LEN;

    // Up to two tags (802.1ad outer + 802.1Q inner, or two 802.1Q). Written out twice rather than as a
    // loop so the common untagged case costs one comparison pair.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(tag) = bytes::<VLAN_TAG_LEN>(ctx, off) else {
            return Parsed::Error(Counter::ParseTruncatedL2);
        };
        ethertype = be16(tag[2], tag[3]);
        off += VLAN_TAG_LEN;
        pkt.vlan = true;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let Some(tag) = bytes::<VLAN_TAG_LEN>(ctx, off) else {
                return Parsed::Error(Counter::ParseTruncatedL2);
            };
            ethertype = be16(tag[2], tag[3]);
            off += VLAN_TAG_LEN;
        }
    }

    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, off, pkt),
        ETH_P_IPV6 => parse_ipv6(ctx, off, pkt),
        // Includes a third VLAN tag: we do not look further, and the frame passes as non-IP.
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Parsed {
    let Some(ip) = bytes::<{ Ipv4Hdr::LEN }>(ctx, off) else {
        return Parsed::Error(Counter::ParseTruncatedL3);
    };
    let version = ip[0] >> 4;
    let ihl = (ip[0] & 0x0f) as usize;
    if version != 4 || ihl < 5 {
        return Parsed::Error(Counter::ParseBadIpHeader);
    }
    pkt.src_known = true;
    let key = &mut pkt.key;
    key.family = FAMILY_V4;
    key.proto = ip[9];
    key.src[..4].copy_from_slice(&ip[12..16]);
    key.dst[..4].copy_from_slice(&ip[16..20]);

    // IP options are legal: the transport header starts after IHL*4 bytes, which must all be present.
    let hdr_len = ihl * 4;
    if ctx.data() + off + hdr_len > ctx.data_end() {
        return Parsed::Error(Counter::ParseTruncatedL3);
    }
    // A non-first fragment starts with payload, not a transport header: reading "ports" there would
    // invent flows. It is accounted under its addresses with zero ports.
    let frag_offset = be16(ip[6], ip[7]) & 0x1fff;
    if frag_offset != 0 {
        pkt.fragment = true;
        return Parsed::Ip;
    }
    parse_l4(ctx, off + hdr_len, pkt)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Parsed {
    let Some(ip) = bytes::<{ Ipv6Hdr::LEN }>(ctx, off) else {
        return Parsed::Error(Counter::ParseTruncatedL3);
    };
    if ip[0] >> 4 != 6 {
        return Parsed::Error(Counter::ParseBadIpHeader);
    }
    pkt.src_known = true;
    pkt.key.family = FAMILY_V6;
    pkt.key.src.copy_from_slice(&ip[8..24]);
    pkt.key.dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut off = off + Ipv6Hdr::LEN;

    // Walk up to IPV6_MAX_EXT_HEADERS extension headers; one more iteration looks at the header after
    // the last one. ESP (50) and "no next header" (59) end the walk like any other upper-layer value:
    // there are no ports to read behind them.
    let mut i = 0;
    while i <= IPV6_MAX_EXT_HEADERS {
        let is_ext = matches!(
            next,
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH | IPV6_FRAGMENT
        );
        if !is_ext {
            pkt.key.proto = next;
            return parse_l4(ctx, off, pkt);
        }
        if i == IPV6_MAX_EXT_HEADERS {
            break;
        }
        match next {
            IPV6_AUTH => {
                let Some(h) = bytes::<2>(ctx, off) else {
                    return Parsed::Error(Counter::ParseTruncatedL3);
                };
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Some(h) = bytes::<8>(ctx, off) else {
                    return Parsed::Error(Counter::ParseTruncatedL3);
                };
                next = h[0];
                off += 8;
                if be16(h[2], h[3]) >> 3 != 0 {
                    pkt.key.proto = next;
                    pkt.fragment = true;
                    return Parsed::Ip;
                }
            }
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first.
            _ => {
                let Some(h) = bytes::<2>(ctx, off) else {
                    return Parsed::Error(Counter::ParseTruncatedL3);
                };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
        }
        i += 1;
    }
    // More extension headers than the budget: do not guess where the transport header is.
    pkt.key.proto = next;
    Parsed::Error(Counter::ParseIpv6ExtLimit)
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Parsed {
    match pkt.key.proto {
        proto::TCP => {
            let Some(tcp) = bytes::<{ TcpHdr::LEN }>(ctx, off) else {
                return Parsed::Error(Counter::ParseTruncatedL4);
            };
            pkt.key.src_port = be16(tcp[0], tcp[1]);
            pkt.key.dst_port = be16(tcp[2], tcp[3]);
            pkt.tcp_flags = tcp[13] as u32;
        }
        proto::UDP => {
            let Some(udp) = bytes::<{ UdpHdr::LEN }>(ctx, off) else {
                return Parsed::Error(Counter::ParseTruncatedL4);
            };
            pkt.key.src_port = be16(udp[0], udp[1]);
            pkt.key.dst_port = be16(udp[2], udp[3]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let Some(icmp) = bytes::<ICMP_HDR_LEN>(ctx, off) else {
                return Parsed::Error(Counter::ParseTruncatedL4);
            };
            pkt.key.src_port = icmp[0] as u16;
            pkt.key.dst_port = icmp[1] as u16;
        }
        // Other protocols (GRE, SCTP, ESP, ...) are real traffic: they get a flow with zero ports.
        _ => {}
    }
    Parsed::Ip
}

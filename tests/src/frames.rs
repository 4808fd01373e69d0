//! Hand-built test frames: Ethernet (0-2 VLAN tags), IPv4 (options, fragment fields), IPv6 (extension
//! header chains), TCP, UDP, ICMP and ICMPv6.
//!
//! Deliberately dependency-free: the point of these frames is to poke at exactly the bytes the XDP
//! parser reads, so every field is written by hand here rather than by a packet library that might
//! "fix" a malformed header for us. Checksums are correct (IPv4 header and L4 over the pseudo-header)
//! so a frame that is meant to be valid really is valid.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

/// IPv6 next-header numbers of the extension headers the builder can emit.
pub mod nh {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
}

/// One 802.1Q or 802.1ad tag: TPID plus the 12-bit VLAN id.
#[derive(Clone, Copy, Debug)]
pub struct Vlan {
    pub tpid: u16,
    pub vid: u16,
}

impl Vlan {
    pub fn q(vid: u16) -> Self {
        Vlan {
            tpid: ETH_P_8021Q,
            vid,
        }
    }
    pub fn ad(vid: u16) -> Self {
        Vlan {
            tpid: ETH_P_8021AD,
            vid,
        }
    }
}

/// IPv4 header fields a test may want to bend.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub ident: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units (13 bits).
    pub frag_offset: u16,
    /// Raw option bytes; padded with EOL to a multiple of 4, which sets IHL > 5.
    pub options: Vec<u8>,
    /// Write this IHL instead of the computed one (to build broken headers).
    pub ihl_override: Option<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Ipv4 {
            src,
            dst,
            ttl: 64,
            ident: 0x1234,
            dont_fragment: false,
            more_fragments: false,
            frag_offset: 0,
            options: Vec::new(),
            ihl_override: None,
        }
    }
}

/// One IPv6 extension header. Lengths are chosen by the test so the parser's length arithmetic
/// (8-octet units for most headers, 4-octet units for AH) is exercised, not assumed.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options; `len8` = Hdr Ext Len (header is 8 * (len8 + 1) bytes, PadN-filled).
    HopByHop { len8: u8 },
    /// Destination options, same layout as hop-by-hop.
    DestOpts { len8: u8 },
    /// Routing header with an unknown routing type and Segments Left 0, which a node must skip.
    Routing { len8: u8 },
    /// Fragment header; `offset` in 8-byte units.
    Fragment { offset: u16, more: bool, ident: u32 },
    /// Authentication header with `icv_words` 32-bit words of ICV (Payload Len = 1 + icv_words).
    Ah { icv_words: u8 },
}

impl Ext {
    fn code(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => nh::HOP_BY_HOP,
            Ext::DestOpts { .. } => nh::DEST_OPTS,
            Ext::Routing { .. } => nh::ROUTING,
            Ext::Fragment { .. } => nh::FRAGMENT,
            Ext::Ah { .. } => nh::AH,
        }
    }

    fn write(&self, next: u8, out: &mut Vec<u8>) {
        match *self {
            Ext::HopByHop { len8 } | Ext::DestOpts { len8 } => {
                let total = 8 * (len8 as usize + 1);
                out.extend_from_slice(&[next, len8]);
                // One PadN option covering the remaining total-2 bytes (type 1, len total-4).
                out.extend_from_slice(&[1, (total - 4) as u8]);
                out.resize(out.len() + total - 4, 0);
            }
            Ext::Routing { len8 } => {
                let total = 8 * (len8 as usize + 1);
                // Routing type 253 (RFC 4727 experimental), Segments Left 0: skipped by every node.
                out.extend_from_slice(&[next, len8, 253, 0]);
                out.resize(out.len() + total - 4, 0);
            }
            Ext::Fragment {
                offset,
                more,
                ident,
            } => {
                let off_flags = (offset << 3) | u16::from(more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&off_flags.to_be_bytes());
                out.extend_from_slice(&ident.to_be_bytes());
            }
            Ext::Ah { icv_words } => {
                out.extend_from_slice(&[next, 1 + icv_words, 0, 0]);
                out.extend_from_slice(&0x1000_0001u32.to_be_bytes()); // SPI
                out.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                out.resize(out.len() + 4 * icv_words as usize, 0xa5);
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub ext: Vec<Ext>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Ipv6 {
            src,
            dst,
            hop_limit: 64,
            ext: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum L3 {
    V4(Ipv4),
    V6(Ipv6),
    /// Any other EtherType with an opaque body (ARP, LLDP ...).
    Other {
        ethertype: u16,
        body: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp { ty: u8, code: u8 },
    Icmpv6 { ty: u8, code: u8 },
}

impl L4 {
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => 1,
            L4::Icmpv6 { .. } => 58,
        }
    }

    /// Header with a zero checksum field; the caller fills it in.
    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
                let ack = if flags & 0x10 != 0 { 0x0a0b_0c0du32 } else { 0 };
                out.extend_from_slice(&ack.to_be_bytes());
                out.extend_from_slice(&[5 << 4, flags]); // data offset 5 words, flags
                out.extend_from_slice(&64240u16.to_be_bytes()); // window
                out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            }
            L4::Udp { sport, dport } => {
                out.extend_from_slice(&sport.to_be_bytes());
                out.extend_from_slice(&dport.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]); // length (patched later), checksum
            }
            L4::Icmp { ty, code } | L4::Icmpv6 { ty, code } => {
                // Type, code, checksum, then identifier/sequence (echo) or unused (errors).
                out.extend_from_slice(&[ty, code, 0, 0, 0x42, 0x42, 0, 1]);
            }
        }
    }

    fn checksum_offset(&self) -> usize {
        match self {
            L4::Tcp { .. } => 16,
            L4::Udp { .. } => 6,
            L4::Icmp { .. } | L4::Icmpv6 { .. } => 2,
        }
    }
}

/// A complete frame description. `build()` turns it into bytes plus layer offsets.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub vlans: Vec<Vlan>,
    pub l3: L3,
    /// `None`: the IP payload is just `payload` (e.g. a non-first fragment's raw bytes).
    pub l4: Option<L4>,
    pub payload: Vec<u8>,
    /// IP protocol / final next-header to write when `l4` is `None`.
    pub proto: u8,
}

/// Built bytes with the offset of each layer, so tests can cut a frame inside a chosen layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Start of the IP header (after Ethernet and VLAN tags).
    pub l3_off: usize,
    /// Start of the transport header (after IPv4 options / IPv6 extension headers).
    pub l4_off: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    L2,
    L3,
    L4,
}

impl Frame {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The frame cut so that only `keep` bytes of `layer` remain (everything above it is gone).
    /// L2 counts from the first VLAN tag: `keep` bytes after the 12 MAC bytes, so a cut frame still has
    /// the 14 bytes BPF_PROG_TEST_RUN insists on when `keep >= 2`.
    pub fn truncated(&self, layer: Layer, keep: usize) -> Vec<u8> {
        let start = match layer {
            Layer::L2 => 12,
            Layer::L3 => self.l3_off,
            Layer::L4 => self.l4_off,
        };
        self.bytes[..(start + keep).min(self.bytes.len())].to_vec()
    }
}

impl FrameSpec {
    pub fn v4(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        FrameSpec {
            vlans: Vec::new(),
            proto: l4.proto(),
            l3: L3::V4(Ipv4::new(src, dst)),
            l4: Some(l4),
            payload: Vec::new(),
        }
    }

    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Self {
        FrameSpec {
            vlans: Vec::new(),
            proto: l4.proto(),
            l3: L3::V6(Ipv6::new(src, dst)),
            l4: Some(l4),
            payload: Vec::new(),
        }
    }

    /// A non-IP frame (e.g. ARP) with an opaque body.
    pub fn other(ethertype: u16, body: Vec<u8>) -> Self {
        FrameSpec {
            vlans: Vec::new(),
            l3: L3::Other { ethertype, body },
            l4: None,
            payload: Vec::new(),
            proto: 0,
        }
    }

    pub fn vlan(mut self, tag: Vlan) -> Self {
        self.vlans.push(tag);
        self
    }

    pub fn payload(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    /// Drop the transport header and send `raw` as the IP payload under protocol `proto`
    /// (for non-first fragments, whose payload is not a header).
    pub fn raw_payload(mut self, proto: u8, raw: &[u8]) -> Self {
        self.l4 = None;
        self.proto = proto;
        self.payload = raw.to_vec();
        self
    }

    pub fn ipv4_mut(&mut self) -> &mut Ipv4 {
        match &mut self.l3 {
            L3::V4(h) => h,
            _ => panic!("not an IPv4 frame spec"),
        }
    }

    pub fn ipv6_mut(&mut self) -> &mut Ipv6 {
        match &mut self.l3 {
            L3::V6(h) => h,
            _ => panic!("not an IPv6 frame spec"),
        }
    }

    pub fn build(&self) -> Frame {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&DST_MAC);
        b.extend_from_slice(&SRC_MAC);
        // Each tag is TPID + TCI; the TPID sits where the EtherType would, then the next type follows.
        for tag in &self.vlans {
            b.extend_from_slice(&tag.tpid.to_be_bytes());
            b.extend_from_slice(&(tag.vid & 0x0fff).to_be_bytes());
        }
        let ethertype = match &self.l3 {
            L3::V4(_) => ETH_P_IPV4,
            L3::V6(_) => ETH_P_IPV6,
            L3::Other { ethertype, .. } => *ethertype,
        };
        b.extend_from_slice(&ethertype.to_be_bytes());
        let l3_off = b.len();

        // Transport segment first: the IP headers need its length.
        let mut seg = Vec::new();
        if let Some(l4) = &self.l4 {
            l4.write(&mut seg);
        }
        seg.extend_from_slice(&self.payload);
        if let Some(L4::Udp { .. }) = self.l4 {
            let len = seg.len() as u16;
            seg[4..6].copy_from_slice(&len.to_be_bytes());
        }

        let l4_off;
        match &self.l3 {
            L3::V4(h) => {
                let opts = padded_options(&h.options);
                let ihl = h.ihl_override.unwrap_or((5 + opts.len() / 4) as u8);
                let total = (20 + opts.len() + seg.len()) as u16;
                let mut flags_frag = h.frag_offset & 0x1fff;
                if h.dont_fragment {
                    flags_frag |= 0x4000;
                }
                if h.more_fragments {
                    flags_frag |= 0x2000;
                }
                b.push(0x40 | (ihl & 0x0f));
                b.push(0); // DSCP/ECN
                b.extend_from_slice(&total.to_be_bytes());
                b.extend_from_slice(&h.ident.to_be_bytes());
                b.extend_from_slice(&flags_frag.to_be_bytes());
                b.extend_from_slice(&[h.ttl, self.proto, 0, 0]);
                b.extend_from_slice(&h.src.octets());
                b.extend_from_slice(&h.dst.octets());
                b.extend_from_slice(&opts);
                let csum = inet_checksum(&b[l3_off..], 0);
                b[l3_off + 10..l3_off + 12].copy_from_slice(&csum.to_be_bytes());
                l4_off = b.len();
                // A non-first fragment carries no transport header, so no L4 checksum to fill in.
                if self.l4.is_some() && h.frag_offset == 0 && !h.more_fragments {
                    let mut pseudo = Vec::with_capacity(12);
                    pseudo.extend_from_slice(&h.src.octets());
                    pseudo.extend_from_slice(&h.dst.octets());
                    pseudo.extend_from_slice(&[0, self.proto]);
                    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                    fill_l4_checksum(self.l4.as_ref(), &mut seg, &pseudo);
                }
            }
            L3::V6(h) => {
                let mut ext = Vec::new();
                let mut fragmented = false;
                for (i, e) in h.ext.iter().enumerate() {
                    let next = h.ext.get(i + 1).map_or(self.proto, Ext::code);
                    e.write(next, &mut ext);
                    fragmented |=
                        matches!(e, Ext::Fragment { offset, more, .. } if *offset != 0 || *more);
                }
                let first = h.ext.first().map_or(self.proto, Ext::code);
                let payload_len = (ext.len() + seg.len()) as u16;
                b.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
                b.extend_from_slice(&payload_len.to_be_bytes());
                b.extend_from_slice(&[first, h.hop_limit]);
                b.extend_from_slice(&h.src.octets());
                b.extend_from_slice(&h.dst.octets());
                b.extend_from_slice(&ext);
                l4_off = b.len();
                if self.l4.is_some() && !fragmented {
                    let mut pseudo = Vec::with_capacity(40);
                    pseudo.extend_from_slice(&h.src.octets());
                    pseudo.extend_from_slice(&h.dst.octets());
                    pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
                    pseudo.extend_from_slice(&[0, 0, 0, self.proto]);
                    fill_l4_checksum(self.l4.as_ref(), &mut seg, &pseudo);
                }
            }
            L3::Other { body, .. } => {
                b.extend_from_slice(body);
                l4_off = b.len();
            }
        }
        b.extend_from_slice(&seg);
        Frame {
            bytes: b,
            l3_off,
            l4_off,
        }
    }
}

/// IPv4 options padded with End-of-Option-List to a whole number of 32-bit words.
fn padded_options(opts: &[u8]) -> Vec<u8> {
    let mut v = opts.to_vec();
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    assert!(v.len() <= 40, "IPv4 options are at most 40 bytes");
    v
}

fn fill_l4_checksum(l4: Option<&L4>, seg: &mut [u8], pseudo: &[u8]) {
    let Some(l4) = l4 else { return };
    // ICMPv4's checksum covers only the message; TCP, UDP and ICMPv6 add the pseudo-header.
    let start = match l4 {
        L4::Icmp { .. } => 0,
        _ => sum_words(pseudo),
    };
    let mut csum = inet_checksum(seg, start);
    if csum == 0 && matches!(l4, L4::Udp { .. }) {
        csum = 0xffff; // UDP transmits a computed zero as all ones (zero means "no checksum").
    }
    let at = l4.checksum_offset();
    seg[at..at + 2].copy_from_slice(&csum.to_be_bytes());
}

fn sum_words(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// RFC 1071 one's-complement checksum over `data`, starting from a partial sum.
pub fn inet_checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial) + u64::from(sum_words(data));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The 8-byte body of an ARP request, enough for a "not IP" frame.
pub fn arp_body() -> Vec<u8> {
    let mut v = vec![0, 1, 8, 0, 6, 4, 0, 1];
    v.extend_from_slice(&SRC_MAC);
    v.extend_from_slice(&[10, 213, 0, 2]);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&[10, 213, 0, 1]);
    v
}

/// Bytes that look exactly like a TCP SYN header from `sport` to `dport`: a non-first fragment carrying
/// them must still be keyed with ports 0, which proves the parser did not read them as a header.
pub fn fake_tcp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    L4::Tcp {
        sport,
        dport,
        flags: 0x02,
    }
    .write(&mut v);
    v
}

#[cfg(test)]
mod tests;

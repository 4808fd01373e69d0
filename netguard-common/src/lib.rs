//! Types and constants shared by the NetGuard XDP program and its userspace.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and laid out with explicit padding so that the kernel and
//! userspace agree byte for byte; the compile-time size checks at the bottom fail the build if a field
//! change would silently shift a layout.
#![no_std]

/// Map names, as they appear in the object file. Userspace sizes and opens maps by these names.
pub mod maps {
    /// Blocklist prefixes shorter than a host (/0../31, /0../127): LPM tries.
    pub const BLOCK_V4: &str = "BLOCK_V4";
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// Blocklist host entries (/32, /128): hash maps, so a million blocked hosts cost one hash lookup
    /// instead of a deep trie walk.
    pub const BLOCK_HOST_V4: &str = "BLOCK_HOST_V4";
    pub const BLOCK_HOST_V6: &str = "BLOCK_HOST_V6";
    /// [`TableFlag`]-indexed arrays: nonzero when that blocklist (allowlist) table may hold entries.
    pub const TABLE_FLAGS: &str = "TABLE_FLAGS";
    pub const ALLOW_FLAGS: &str = "ALLOW_FLAGS";
    /// 65,536-bit map, one bit per IPv4 /16: set when some blocklist prefix in `BLOCK_V4` overlaps it.
    pub const PREFIX16_V4: &str = "PREFIX16_V4";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const FLOWS: &str = "FLOWS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
}

/// Program names (the function names of the `#[xdp]` entry points).
pub mod programs {
    /// The sensor's datapath.
    pub const NETGUARD: &str = "netguard";
    /// `return XDP_PASS` and nothing else: the baseline that benchmarks divide by.
    pub const BASELINE_PASS: &str = "netguard_baseline_pass";
}

/// Names of global variables that userspace overrides at load time.
pub mod globals {
    /// Maximum ring-buffer events one CPU may emit per millisecond (`u32`).
    pub const EVENT_BUDGET_PER_MS: &str = "EVENT_BUDGET_PER_MS";
}

/// Index into the `TABLE_FLAGS` and `ALLOW_FLAGS` arrays (the allowlist has no host tables, so only
/// its prefix slots are used). A packet skips lookups in tables whose flag is zero.
/// Userspace raises a flag before the first insert into its table and lowers it only after the table
/// became empty, so a flag is never zero while its table holds an entry.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFlag {
    HostV4 = 0,
    PrefixV4 = 1,
    HostV6 = 2,
    PrefixV6 = 3,
}

impl TableFlag {
    pub const COUNT: u32 = 4;
}

/// `PREFIX16_V4` holds 65,536 bits in this many u64 words. A passing packet walks the IPv4 prefix trie
/// only when the bit of its source's /16 is set: with thousands of prefixes loaded, the walk cost
/// 70-80 ns per packet, and most sources share no /16 with any of them.
pub const PREFIX16_WORDS: u32 = 1024;

/// Default map sizes. The issue asks for one million blocklist entries and one million flows.
pub mod defaults {
    pub const BLOCK_V4_MAX: u32 = 1 << 20;
    pub const BLOCK_V6_MAX: u32 = 1 << 18;
    pub const ALLOW_V4_MAX: u32 = 1 << 16;
    pub const ALLOW_V6_MAX: u32 = 1 << 16;
    pub const FLOWS_MAX: u32 = 1 << 20;
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 1 << 22;
    /// 64 events/ms/CPU = 64k events/s/CPU: far more than normal connection rates, yet a random-source
    /// flood cannot turn the ring buffer into a per-packet channel.
    pub const EVENT_BUDGET_PER_MS: u32 = 64;
}

/// IP protocol numbers the parser understands.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// TCP flag bits as they appear in the TCP header's flags byte.
pub mod tcp_flags {
    pub const FIN: u32 = 0x01;
    pub const SYN: u32 = 0x02;
    pub const RST: u32 = 0x04;
    pub const PSH: u32 = 0x08;
    pub const ACK: u32 = 0x10;
    pub const URG: u32 = 0x20;
}

/// Address family tag stored in [`FlowKey::family`].
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A unidirectional flow as seen on ingress. IPv4 addresses occupy the first four bytes of `src`/`dst`
/// and the rest is zero, so one LRU map serves both families. Ports are in host byte order. For ICMP
/// and ICMPv6, `src_port` holds the type and `dst_port` the code; for non-first fragments and protocols
/// without ports both are zero.
///
/// 8-byte alignment (the size stays 40) lets the BPF backend zero and copy the key with five 8-byte
/// moves; at its natural 2-byte alignment LLVM emits a call to a byte-at-a-time memset instead, which
/// cost more than the rest of the packet's processing.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Per-flow counters: the raw material for detection. Exactly one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) of the first and latest packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Packets with SYN and without ACK (connection attempts).
    pub syn: u32,
    /// Packets with both SYN and ACK.
    pub syn_ack: u32,
    /// Packets with ACK and without SYN.
    pub ack: u32,
    pub rst: u32,
    pub fin: u32,
    /// Non-first IP fragments counted in this flow (they carry no ports).
    pub fragments: u32,
    /// Bitwise OR of every TCP flags byte seen.
    pub tcp_flags: u32,
    pub _pad: u32,
}

/// Value of blocklist trie entries: how often the entry dropped a packet, and when it last did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockValue {
    pub hits: u64,
    pub last_hit_ns: u64,
}

/// Value of allowlist trie entries: how often the entry overrode a blocklist match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowValue {
    pub overrides: u64,
    pub last_hit_ns: u64,
}

/// Event kinds sent through the ring buffer.
pub mod event_kind {
    /// The first packet of a flow not yet in the flow table (or evicted from it).
    pub const NEW_FLOW: u32 = 1;
    /// A blocklist entry dropped a packet and had not dropped one for [`super::BLOCK_HIT_EVENT_GAP_NS`]:
    /// at most one such event per entry per gap, however hard the source hammers.
    pub const BLOCK_HIT: u32 = 2;
}

/// Minimum time between two BLOCK_HIT events of one blocklist entry.
pub const BLOCK_HIT_EVENT_GAP_NS: u64 = 1_000_000_000;

/// One ring-buffer record: a new flow, or a rate-limited blocklist hit. Never one per packet, and
/// subject to a per-CPU budget. `key` is the packet's flow key in both cases.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub kind: u32,
    /// TCP flags of the packet that created the flow (0 for non-TCP).
    pub tcp_flags: u32,
    pub ts_ns: u64,
    pub key: FlowKey,
    /// Length of the packet that created the flow.
    pub packet_len: u32,
    pub _pad: u32,
}

/// Per-CPU token window used to cap ring-buffer events per millisecond.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_ms: u64,
    pub used: u64,
}

/// Global counters, one slot per [`Counter`], kept in a per-CPU array of one element so that a packet
/// costs one map lookup however many counters it bumps. Userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub v: [u64; Counter::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            v: [0; Counter::COUNT],
        }
    }
}

impl Counters {
    pub const fn get(&self, c: Counter) -> u64 {
        self.v[c as usize]
    }
}

/// Index of each global counter in [`Counters::v`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Packets and bytes that left the program with XDP_PASS.
    PassPackets = 0,
    PassBytes,
    /// Packets and bytes dropped.
    DropPackets,
    DropBytes,
    /// Drops by reason (each also counted in DropPackets).
    DropBlocklistV4,
    DropBlocklistV6,
    /// Blocklist matches that an allowlist entry overrode (passed).
    AllowlistOverride,
    /// Parse errors, by reason. Each such packet is passed.
    ParseTruncatedL2,
    ParseTruncatedL3,
    ParseTruncatedL4,
    ParseBadIpHeader,
    ParseIpv6ExtLimit,
    /// Frames whose EtherType is neither IPv4 nor IPv6 (ARP, LLDP, ...), passed untouched.
    NonIp,
    /// IPv4 and IPv6 non-first fragments (accounted with zero ports).
    Fragments,
    /// VLAN-tagged frames (one or two tags).
    Vlan,
    /// Flow-table inserts (new flows) and inserts the kernel refused.
    FlowsCreated,
    FlowInsertFailed,
    /// Ring-buffer events sent, events skipped by the per-CPU budget, and reservations that failed
    /// because the buffer was full (userspace not keeping up).
    EventsSent,
    EventsOverBudget,
    RingbufReserveFailed,
}

impl Counter {
    pub const COUNT: usize = 20;

    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::PassPackets,
        Counter::PassBytes,
        Counter::DropPackets,
        Counter::DropBytes,
        Counter::DropBlocklistV4,
        Counter::DropBlocklistV6,
        Counter::AllowlistOverride,
        Counter::ParseTruncatedL2,
        Counter::ParseTruncatedL3,
        Counter::ParseTruncatedL4,
        Counter::ParseBadIpHeader,
        Counter::ParseIpv6ExtLimit,
        Counter::NonIp,
        Counter::Fragments,
        Counter::Vlan,
        Counter::FlowsCreated,
        Counter::FlowInsertFailed,
        Counter::EventsSent,
        Counter::EventsOverBudget,
        Counter::RingbufReserveFailed,
    ];

    /// Parse-error counters: the sum is `netguard_parse_errors_total`.
    pub const PARSE_ERRORS: [Counter; 5] = [
        Counter::ParseTruncatedL2,
        Counter::ParseTruncatedL3,
        Counter::ParseTruncatedL4,
        Counter::ParseBadIpHeader,
        Counter::ParseIpv6ExtLimit,
    ];

    /// Stable snake_case name, used for metric labels and the CLI summary.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PassPackets => "pass_packets",
            Counter::PassBytes => "pass_bytes",
            Counter::DropPackets => "drop_packets",
            Counter::DropBytes => "drop_bytes",
            Counter::DropBlocklistV4 => "drop_blocklist_v4",
            Counter::DropBlocklistV6 => "drop_blocklist_v6",
            Counter::AllowlistOverride => "allowlist_override",
            Counter::ParseTruncatedL2 => "parse_truncated_l2",
            Counter::ParseTruncatedL3 => "parse_truncated_l3",
            Counter::ParseTruncatedL4 => "parse_truncated_l4",
            Counter::ParseBadIpHeader => "parse_bad_ip_header",
            Counter::ParseIpv6ExtLimit => "parse_ipv6_ext_limit",
            Counter::NonIp => "non_ip",
            Counter::Fragments => "fragments",
            Counter::Vlan => "vlan",
            Counter::FlowsCreated => "flows_created",
            Counter::FlowInsertFailed => "flow_insert_failed",
            Counter::EventsSent => "events_sent",
            Counter::EventsOverBudget => "events_over_budget",
            Counter::RingbufReserveFailed => "ringbuf_reserve_failed",
        }
    }
}

/// Maximum IPv6 extension headers the parser walks before it gives up and counts a parse error.
pub const IPV6_MAX_EXT_HEADERS: usize = 6;
/// Maximum VLAN tags (802.1Q / 802.1ad) the parser strips.
pub const MAX_VLAN_TAGS: usize = 2;

// Layout guards: both sides compile these, so a change that shifts a field breaks the build, not the
// datapath.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 64);
const _: () = assert!(core::mem::size_of::<BlockValue>() == 16);
const _: () = assert!(core::mem::size_of::<AllowValue>() == 16);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 64);
const _: () = assert!(core::mem::size_of::<Counters>() == 8 * Counter::COUNT);
const _: () = assert!(Counter::RingbufReserveFailed as usize + 1 == Counter::COUNT);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], Copy, made only of integers and byte arrays, and has no
    // implicit padding (checked by the size assertions above), so any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::BlockValue {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::EventBudget {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_matches_discriminants() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(
                *c as usize,
                i,
                "{} is out of order in Counter::ALL",
                c.name()
            );
        }
    }

    #[test]
    fn counter_names_are_unique_snake_case() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            assert!(
                a.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            );
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}

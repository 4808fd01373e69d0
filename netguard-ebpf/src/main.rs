//! NetGuard's XDP datapath.
//!
//! Per packet: parse, look the source up in the blocklist (and, only on a match, in the allowlist),
//! then either drop it or account it to its flow. Work is ordered so the common case, a passed packet
//! of a known flow, costs the blocklist lookups of non-empty tables, one LRU lookup and a per-CPU
//! counter bump:
//! - the allowlist is consulted only when the blocklist matched (the verdict is the same as checking
//!   it first, and a passing packet never pays for it);
//! - blocked hosts (/32, /128) live in hash maps and prefixes in LPM tries, so a million blocked hosts
//!   cost one hash lookup rather than a deep trie walk; an array of flags (inlined by the JIT) skips
//!   tables that are empty;
//! - the ring buffer is touched only when a flow is created.
#![no_std]
#![no_main]
// The BPF target has 64-bit atomic add but no compare-and-swap, so core hides `AtomicU64::fetch_add`.
// The intrinsic lowers straight to BPF's atomic add. (The eBPF build already needs nightly or
// RUSTC_BOOTSTRAP for `-Z build-std`.)
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod parse;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use netguard_common::{
    AllowValue, BLOCK_HIT_EVENT_GAP_NS, BlockValue, Counter, Counters, EventBudget, FAMILY_V4,
    FlowEvent, FlowKey, FlowStats, PREFIX16_WORDS, TableFlag, defaults, event_kind, proto,
    tcp_flags,
};
use parse::{Packet, Parsed};

// Sizes here are defaults; userspace overrides every max_entries from its config before loading.
#[map]
static BLOCK_V4: LpmTrie<[u8; 4], BlockValue> =
    LpmTrie::with_max_entries(defaults::BLOCK_V4_MAX, 0);
#[map]
static BLOCK_V6: LpmTrie<[u8; 16], BlockValue> =
    LpmTrie::with_max_entries(defaults::BLOCK_V6_MAX, 0);
#[map]
static BLOCK_HOST_V4: HashMap<[u8; 4], BlockValue> = HashMap::with_max_entries(
    defaults::BLOCK_V4_MAX,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);
#[map]
static BLOCK_HOST_V6: HashMap<[u8; 16], BlockValue> = HashMap::with_max_entries(
    defaults::BLOCK_V6_MAX,
    aya_ebpf::bindings::BPF_F_NO_PREALLOC,
);
#[map]
static TABLE_FLAGS: Array<u32> = Array::with_max_entries(TableFlag::COUNT, 0);
#[map]
static ALLOW_FLAGS: Array<u32> = Array::with_max_entries(TableFlag::COUNT, 0);
#[map]
static PREFIX16_V4: Array<u64> = Array::with_max_entries(PREFIX16_WORDS, 0);
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> =
    LpmTrie::with_max_entries(defaults::ALLOW_V4_MAX, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> =
    LpmTrie::with_max_entries(defaults::ALLOW_V6_MAX, 0);
/// One LRU table for both families keeps eviction fair between them and costs one lookup per packet.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(defaults::FLOWS_MAX, 0);
/// A single slot of per-CPU counters: one lookup per packet, no atomics, summed by userspace.
#[map]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(defaults::EVENTS_BYTES, 0);
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Ring-buffer events one CPU may emit per millisecond; overridden at load time.
#[unsafe(no_mangle)]
static EVENT_BUDGET_PER_MS: u32 = defaults::EVENT_BUDGET_PER_MS;

#[xdp]
pub fn netguard(ctx: XdpContext) -> u32 {
    // Fail open: `try_netguard` only errs if a map slot that always exists is missing. A sensor must
    // never black-hole a host's traffic because of its own bug, so that case passes (XDP_ABORTED would
    // drop).
    try_netguard(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// `return XDP_PASS`: the baseline that benchmarks divide by, loaded from the same object so that both
/// run under identical conditions.
#[xdp]
pub fn netguard_baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_netguard(ctx: &XdpContext) -> Result<u32, ()> {
    let counters = COUNTERS.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU slot, and XDP programs are not preempted on their CPU mid-run.
    let c = unsafe { &mut (*counters).v };
    let len = (ctx.data_end() - ctx.data()) as u64;

    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = Packet::zeroed_in(&mut slot);
    let parsed = parse::parse(ctx, pkt);
    match parsed {
        Parsed::Ip => {}
        Parsed::NonIp => {
            c[Counter::NonIp as usize] += 1;
            return Ok(pass(c, len));
        }
        Parsed::Error(reason) => {
            // `get_mut`, not indexing: the reason arrives in a register the compiler cannot bound, and
            // an index would keep a panic path, which the verifier rejects.
            if let Some(n) = c.get_mut(reason as usize) {
                *n += 1;
            }
            // Without a valid IP header there is no source to judge: pass. With one, fall through to
            // the blocklist, or a blocked source could slip past by truncating its TCP header.
            if !pkt.src_known {
                return Ok(pass(c, len));
            }
        }
    }
    if pkt.vlan {
        c[Counter::Vlan as usize] += 1;
    }
    if pkt.fragment {
        c[Counter::Fragments as usize] += 1;
    }

    // SAFETY: plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match is_blocked(&pkt.key, c, now) {
        Verdict::Pass => {}
        Verdict::Drop { notify } => {
            c[Counter::DropPackets as usize] += 1;
            c[Counter::DropBytes as usize] += len;
            if notify {
                let flags = if pkt.key.proto == proto::TCP {
                    pkt.tcp_flags
                } else {
                    0
                };
                emit_event(event_kind::BLOCK_HIT, pkt, flags, len, now, c);
            }
            return Ok(xdp_action::XDP_DROP);
        }
    }
    // A packet that failed to parse past its IP header is passed but not accounted to a flow: its
    // ports are unknown, and inventing a flow for it would mislead detection.
    if !matches!(parsed, Parsed::Ip) {
        return Ok(pass(c, len));
    }

    account_flow(ctx, pkt, c, len, now);
    Ok(pass(c, len))
}

#[inline(always)]
fn pass(c: &mut [u64; Counter::COUNT], len: u64) -> u32 {
    c[Counter::PassPackets as usize] += 1;
    c[Counter::PassBytes as usize] += len;
    xdp_action::XDP_PASS
}

#[inline(always)]
fn table_used(t: TableFlag) -> bool {
    matches!(TABLE_FLAGS.get(t as u32), Some(f) if *f != 0)
}

#[inline(always)]
fn allow_used(t: TableFlag) -> bool {
    matches!(ALLOW_FLAGS.get(t as u32), Some(f) if *f != 0)
}

/// The blocklist entry matching `src`, if any: the host table first (an exact match is the longest
/// possible prefix), then the prefix trie.
#[inline(always)]
fn block_lookup_v4(src: [u8; 4]) -> Option<&'static BlockValue> {
    if table_used(TableFlag::HostV4) {
        // SAFETY: entries are only read and atomically updated; see `record_hit`.
        if let Some(v) = unsafe { BLOCK_HOST_V4.get(&src) } {
            return Some(v);
        }
    }
    if table_used(TableFlag::PrefixV4) && prefix16_may_match(src) {
        return BLOCK_V4.get(Key::new(32, src));
    }
    None
}

/// Whether any IPv4 blocklist prefix overlaps the /16 of `src` (see `PREFIX16_V4`).
#[inline(always)]
fn prefix16_may_match(src: [u8; 4]) -> bool {
    let slash16 = u16::from_be_bytes([src[0], src[1]]) as u32;
    match PREFIX16_V4.get((slash16 >> 6) % PREFIX16_WORDS) {
        Some(word) => *word & (1u64 << (slash16 & 63)) != 0,
        None => true,
    }
}

#[inline(always)]
fn block_lookup_v6(src: [u8; 16]) -> Option<&'static BlockValue> {
    if table_used(TableFlag::HostV6) {
        // SAFETY: as above.
        if let Some(v) = unsafe { BLOCK_HOST_V6.get(&src) } {
            return Some(v);
        }
    }
    if table_used(TableFlag::PrefixV6) {
        return BLOCK_V6.get(Key::new(128, src));
    }
    None
}

enum Verdict {
    Pass,
    /// `notify`: the entry had been quiet for BLOCK_HIT_EVENT_GAP_NS, so userspace hears about it.
    Drop {
        notify: bool,
    },
}

/// Blocklist verdict for the packet's source. Records the hit on the matching entry, or the override
/// on the allowlist entry that saved it.
#[inline(always)]
fn is_blocked(key: &FlowKey, c: &mut [u64; Counter::COUNT], now: u64) -> Verdict {
    if key.family == FAMILY_V4 {
        let src = [key.src[0], key.src[1], key.src[2], key.src[3]];
        let Some(hit) = block_lookup_v4(src) else {
            return Verdict::Pass;
        };
        if allow_used(TableFlag::PrefixV4)
            && let Some(allow) = ALLOW_V4.get(Key::new(32, src))
        {
            record_override(allow, c, now);
            return Verdict::Pass;
        }
        c[Counter::DropBlocklistV4 as usize] += 1;
        Verdict::Drop {
            notify: record_hit(hit, now),
        }
    } else {
        let Some(hit) = block_lookup_v6(key.src) else {
            return Verdict::Pass;
        };
        if allow_used(TableFlag::PrefixV6)
            && let Some(allow) = ALLOW_V6.get(Key::new(128, key.src))
        {
            record_override(allow, c, now);
            return Verdict::Pass;
        }
        c[Counter::DropBlocklistV6 as usize] += 1;
        Verdict::Drop {
            notify: record_hit(hit, now),
        }
    }
}

/// Entries are shared by all CPUs, so hit counts use atomic adds; `last_hit_ns` is a plain store
/// because any CPU's recent timestamp is as good as another's. Returns true when the entry had been
/// quiet for the event gap (two CPUs racing here may both say so; userspace deduplicates).
#[inline(always)]
fn record_hit(v: &BlockValue, now: u64) -> bool {
    let v = v as *const BlockValue as *mut BlockValue;
    // SAFETY: `v` points into a map value, which is writable kernel memory that outlives this call.
    unsafe {
        atomic_add(&raw mut (*v).hits, 1);
        let quiet = now.wrapping_sub((*v).last_hit_ns) >= BLOCK_HIT_EVENT_GAP_NS;
        (*v).last_hit_ns = now;
        quiet
    }
}

#[inline(always)]
fn record_override(v: &AllowValue, c: &mut [u64; Counter::COUNT], now: u64) {
    let v = v as *const AllowValue as *mut AllowValue;
    // SAFETY: as in `record_hit`.
    unsafe {
        atomic_add(&raw mut (*v).overrides, 1);
        (*v).last_hit_ns = now;
    }
    c[Counter::AllowlistOverride as usize] += 1;
}

/// Counts the packet in its flow, creating the flow (and its ring-buffer event) when it is new.
#[inline(always)]
fn account_flow(ctx: &XdpContext, pkt: &Packet, c: &mut [u64; Counter::COUNT], len: u64, now: u64) {
    let flags = if pkt.key.proto == proto::TCP {
        pkt.tcp_flags
    } else {
        0
    };
    if let Some(st) = FLOWS.get_ptr_mut(&pkt.key) {
        update_flow(st, pkt, flags, len, now);
        return;
    }

    let mut st = FlowStats {
        packets: 1,
        bytes: len,
        first_seen_ns: now,
        last_seen_ns: now,
        tcp_flags: flags,
        fragments: pkt.fragment as u32,
        ..FlowStats::default()
    };
    count_tcp_flags(&mut st, flags);
    // BPF_NOEXIST: if another CPU created the flow between our lookup and here, add to its entry
    // instead of overwriting its counts.
    match FLOWS.insert(&pkt.key, &st, aya_ebpf::bindings::BPF_NOEXIST.into()) {
        Ok(()) => {
            c[Counter::FlowsCreated as usize] += 1;
            emit_event(event_kind::NEW_FLOW, pkt, flags, len, now, c);
        }
        Err(err) => {
            if let Some(st) = FLOWS.get_ptr_mut(&pkt.key) {
                update_flow(st, pkt, flags, len, now);
            } else {
                c[Counter::FlowInsertFailed as usize] += 1;
                // Rare (the LRU map evicts rather than fills), so logging here stays off the hot path.
                warn!(ctx, "flow insert failed: {}", err);
            }
        }
    }
}

#[inline(always)]
fn count_tcp_flags(st: &mut FlowStats, flags: u32) {
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    st.syn += (syn && !ack) as u32;
    st.syn_ack += (syn && ack) as u32;
    st.ack += (ack && !syn) as u32;
    st.rst += (flags & tcp_flags::RST != 0) as u32;
    st.fin += (flags & tcp_flags::FIN != 0) as u32;
}

/// Relaxed atomic add whose result is unused, which LLVM emits as a single BPF atomic add (XADD).
#[inline(always)]
unsafe fn atomic_add(dst: *mut u64, v: u64) {
    // SAFETY: the caller passes an 8-byte-aligned u64 inside a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, v) };
}

/// Plain (non-atomic) updates: RSS steers all packets of a 5-tuple to one RX queue, and NAPI runs a
/// queue on one CPU at a time, so two CPUs do not update the same flow entry concurrently in practice
/// (the rare exception can only lose an increment). Atomic adds measured 13 ns/packet more here, a
/// third of the whole pass path. Blocklist hit counters, which many queues do share, stay atomic.
#[inline(always)]
fn update_flow(st: *mut FlowStats, pkt: &Packet, flags: u32, len: u64, now: u64) {
    // SAFETY: `st` points to a live map value.
    let st = unsafe { &mut *st };
    st.packets += 1;
    st.bytes += len;
    st.last_seen_ns = now;
    st.fragments += pkt.fragment as u32;
    if flags != 0 {
        count_tcp_flags(st, flags);
        // Write only when a new bit appears, so a long flow does not keep dirtying the cache line.
        if st.tcp_flags & flags != flags {
            st.tcp_flags |= flags;
        }
    }
}

/// Sends an event, at most `EVENT_BUDGET_PER_MS` per CPU per millisecond. Under a random-source flood
/// every packet is a new flow; the budget keeps the ring buffer from becoming a per-packet channel,
/// and userspace still sees every flow in the flow map.
#[inline(always)]
fn emit_event(
    kind: u32,
    pkt: &Packet,
    flags: u32,
    len: u64,
    now: u64,
    c: &mut [u64; Counter::COUNT],
) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the global is a read-only constant patched by the loader; read it volatile so the
    // compiler does not fold the default value in.
    let limit = unsafe { core::ptr::read_volatile(&raw const EVENT_BUDGET_PER_MS) } as u64;
    let window = now / 1_000_000;
    // SAFETY: per-CPU slot, not shared with other CPUs.
    let b = unsafe { &mut *budget };
    if b.window_ms != window {
        b.window_ms = window;
        b.used = 0;
    }
    if b.used >= limit {
        c[Counter::EventsOverBudget as usize] += 1;
        return;
    }
    b.used += 1;
    match EVENTS.reserve::<FlowEvent>(0) {
        Some(mut entry) => {
            entry.write(FlowEvent {
                kind,
                tcp_flags: flags,
                ts_ns: now,
                key: pkt.key,
                packet_len: len as u32,
                _pad: 0,
            });
            entry.submit(0);
            c[Counter::EventsSent as usize] += 1;
        }
        None => c[Counter::RingbufReserveFailed as usize] += 1,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

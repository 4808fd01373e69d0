//! Per-flow deltas between two snapshots of the kernel flow table. The kernel keeps running totals per
//! flow; rates need what happened since the previous tick, so the previous totals of live flows are
//! remembered here.
//!
//! Cost: a flow with no packet since the previous snapshot (`last_seen` not after it) has a zero delta
//! and needs no lookup at all, so a tick costs one lookup per *active* flow. With a table as large as
//! the kernel's, each lookup is a cache miss; the table is therefore open-addressed with one 64-byte
//! slot per flow (one miss, not hashbrown's two), and a snapshot is processed in batches whose slots are
//! prefetched together, so the misses overlap. Memory: entries of flows idle for `flow_forget_after`
//! are dropped; and when the table grows past twice the kernel snapshot (the kernel's LRU evicted flows
//! we still remember, as under a flood of short flows), one tick visits every flow and keeps only those
//! present, so memory stays within a small multiple of the kernel table.

use std::hash::{BuildHasher, RandomState};

use netguard_common::{FlowKey, FlowStats};

/// CLOCK_MONOTONIC_COARSE now, in ns: the clock of `FlowStats::first_seen_ns`/`last_seen_ns`
/// (`bpf_ktime_get_coarse_ns`), to pass to [`Extractor::observe_flows`].
pub fn mono_coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; this clock exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// What one flow did since the previous snapshot. Counters never go negative: a flow that the kernel
/// evicted and re-created restarts from its new totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FlowDelta {
    pub packets: u64,
    pub bytes: u64,
    pub syn: u64,
    pub syn_ack: u64,
    pub ack: u64,
    pub rst: u64,
    pub frags: u64,
    /// The flow appeared since the previous snapshot.
    pub new: bool,
}

/// Previous totals of one flow (64 bytes with its key), keyed by a keyed 64-bit hash of the flow key
/// rather than the 40-byte key. A collision needs ~4·10^9 live flows to become likely, and attackers
/// cannot aim for one because the hash key is random per process; its cost would be one wrong delta.
#[derive(Clone, Copy, Debug, Default)]
struct Prev {
    first_seen_ns: u64,
    last_seen_ns: u64,
    packets: u64,
    bytes: u64,
    syn: u32,
    syn_ack: u32,
    ack: u32,
    rst: u32,
    frags: u32,
    /// Snapshot sequence in which the flow was last visited.
    seen: u32,
}

/// One cache line: the flow's hash (0 = empty slot) and its previous totals.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Slot {
    hash: u64,
    prev: Prev,
}

/// `cap` empty slots. A table of a million flows spans 128 MiB, and with 4 KiB pages nearly every
/// lookup would also miss the TLB; asking for transparent huge pages before the memory is first touched
/// avoids most of those misses (a hint: without THP it is a no-op).
fn huge_vec(cap: usize) -> Vec<Slot> {
    let mut v: Vec<Slot> = Vec::with_capacity(cap);
    let bytes = cap * size_of::<Slot>();
    if bytes >= 4 << 20 {
        const HUGE: usize = 2 << 20;
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + bytes) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside our own allocation, and MADV_HUGEPAGE only changes how the
            // kernel backs it, never its contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v.resize(cap, Slot::default());
    v
}

/// Open addressing with linear probing, at most 3/4 full. Entries are only ever removed all at once
/// (`retain` rebuilds), so no tombstones are needed.
#[derive(Default)]
struct Memo {
    slots: Vec<Slot>,
    len: usize,
}

impl Memo {
    fn home(&self, h: u64) -> usize {
        h as usize & (self.slots.len() - 1)
    }

    fn prefetch(&self, h: u64) {
        if self.slots.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let p = &self.slots[self.home(h)] as *const Slot;
            // SAFETY: a prefetch is only a hint; it never faults, and the address is inside our Vec.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
        }
    }

    fn find(&self, h: u64) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(h);
        loop {
            match self.slots[i].hash {
                x if x == h => return Some(i),
                0 => return None,
                _ => i = (i + 1) & (self.slots.len() - 1),
            }
        }
    }

    fn insert(&mut self, h: u64, prev: Prev) {
        if 4 * (self.len + 1) > 3 * self.slots.len() {
            self.rebuild((2 * self.slots.len()).max(1024), |_| true);
        }
        let mut i = self.home(h);
        loop {
            let s = &mut self.slots[i];
            if s.hash == 0 {
                self.len += 1;
            }
            if s.hash == 0 || s.hash == h {
                *s = Slot { hash: h, prev };
                return;
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }

    /// Re-inserts the entries that `keep` accepts into a table of `cap` slots (a power of two).
    fn rebuild(&mut self, cap: usize, keep: impl Fn(&Prev) -> bool) {
        let old = std::mem::replace(&mut self.slots, huge_vec(cap));
        self.len = 0;
        for s in old.into_iter().filter(|s| s.hash != 0 && keep(&s.prev)) {
            self.insert(s.hash, s.prev);
        }
    }

    fn retain(&mut self, keep: impl Fn(&Prev) -> bool) {
        let survivors = self
            .slots
            .iter()
            .filter(|s| s.hash != 0 && keep(&s.prev))
            .count();
        // Sized for the survivors, so a table grown by a flood shrinks once the flood has passed.
        let cap = (survivors * 2).next_power_of_two().max(1024);
        self.rebuild(cap, keep);
    }
}

#[derive(Default)]
pub(crate) struct FlowTable {
    prev: Memo,
    /// Random per process: flow keys are chosen by senders, who must not be able to pile their flows
    /// onto one hash.
    keys: RandomState,
    seq: u32,
    sweeping: bool,
}

impl FlowTable {
    pub fn len(&self) -> usize {
        self.prev.len
    }

    /// Starts a snapshot of `flows` flows.
    pub fn begin(&mut self, flows: usize) {
        self.seq = self.seq.wrapping_add(1);
        self.sweeping = self.prev.len > 2 * flows + 1024;
    }

    /// Whether `delta` will need the flow's hash, and if so the hash, with its slot prefetched. A
    /// snapshot is walked in batches: `prepare` for the whole batch, then `delta` for each flow.
    pub fn prepare(&self, key: &FlowKey, st: &FlowStats, boundary: Option<u64>) -> Option<u64> {
        let idle = boundary.is_some_and(|b| st.last_seen_ns <= b);
        if idle && !self.sweeping {
            return None;
        }
        // 0 marks an empty slot.
        let h = self.keys.hash_one(key).max(1);
        self.prev.prefetch(h);
        Some(h)
    }

    /// The delta of one flow of the snapshot, given what `prepare` returned for it. `boundary` is the
    /// monotonic time of the previous snapshot (None on the first one: then nothing is known about what
    /// is new, and every flow is a baseline). Flows idle for `forget_ns` are not remembered.
    pub fn delta(
        &mut self,
        hash: Option<u64>,
        st: &FlowStats,
        boundary: Option<u64>,
        now: u64,
        forget_ns: u64,
    ) -> FlowDelta {
        let Some(h) = hash else {
            return FlowDelta::default();
        };
        let found = self.prev.find(h);
        if boundary.is_some_and(|b| st.last_seen_ns <= b) {
            // Idle, visited only to mark it present during a sweep.
            if let Some(i) = found {
                self.prev.slots[i].prev.seen = self.seq;
            }
            return FlowDelta::default();
        }
        let created_since = boundary.is_some_and(|b| st.first_seen_ns > b);
        let d = match found.map(|i| &self.prev.slots[i].prev) {
            // Same incarnation of the flow: the difference of the totals.
            Some(p) if p.first_seen_ns == st.first_seen_ns && st.packets >= p.packets => {
                FlowDelta {
                    packets: st.packets - p.packets,
                    bytes: st.bytes.saturating_sub(p.bytes),
                    syn: u64::from(st.syn.saturating_sub(p.syn)),
                    syn_ack: u64::from(st.syn_ack.saturating_sub(p.syn_ack)),
                    ack: u64::from(st.ack.saturating_sub(p.ack)),
                    rst: u64::from(st.rst.saturating_sub(p.rst)),
                    frags: u64::from(st.fragments.saturating_sub(p.frags)),
                    new: false,
                }
            }
            // New, or evicted and re-created by the kernel since our previous look: everything it holds
            // happened since then. Otherwise (first snapshot, forgotten flow, totals going backwards)
            // it is re-baselined rather than guessed.
            _ if created_since => totals(st),
            _ => FlowDelta::default(),
        };
        if st.last_seen_ns.saturating_add(forget_ns) >= now {
            let p = Prev {
                first_seen_ns: st.first_seen_ns,
                last_seen_ns: st.last_seen_ns,
                packets: st.packets,
                bytes: st.bytes,
                syn: st.syn,
                syn_ack: st.syn_ack,
                ack: st.ack,
                rst: st.rst,
                frags: st.fragments,
                seen: self.seq,
            };
            match found {
                Some(i) => self.prev.slots[i].prev = p,
                None => self.prev.insert(h, p),
            }
        }
        d
    }

    /// Ends a snapshot: forgets flows idle for `forget_ns`, and after a sweep those not in the snapshot.
    pub fn end(&mut self, now: u64, forget_ns: u64) {
        let (seq, sweeping) = (self.seq, self.sweeping);
        // The age scan touches every entry, so it runs every 8th snapshot, not every one.
        if sweeping || seq.is_multiple_of(8) {
            self.prev.retain(|p| {
                (!sweeping || p.seen == seq) && p.last_seen_ns.saturating_add(forget_ns) >= now
            });
        }
    }
}

fn totals(st: &FlowStats) -> FlowDelta {
    FlowDelta {
        packets: st.packets,
        bytes: st.bytes,
        syn: u64::from(st.syn),
        syn_ack: u64::from(st.syn_ack),
        ack: u64::from(st.ack),
        rst: u64::from(st.rst),
        frags: u64::from(st.fragments),
        new: true,
    }
}

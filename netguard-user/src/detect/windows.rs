//! Per-source sliding windows: the [`Extractor`] turns snapshots of the kernel flow table (and host
//! events) into one [`FeatureVector`] per active source per tick.
//!
//! Each tracked source keeps a ring of one bucket per tick covering the long window; the short window is
//! the newest bucket. Memory is bounded: at most `max_sources` sources are tracked (about 1.3 KiB each
//! with the default 10 s window, so ~85 MiB at the default cap), plus one bucket per untracked source
//! seen in the current tick (at most `2 * max(max_sources, 4096)`, ~20 MiB at the default cap). When
//! the cap is reached, tracked sources idle in the current tick are evicted least-recently-active
//! first, then newcomers are admitted heaviest first; whatever does not fit is folded into one aggregate
//! pseudo-source, [`OVERFLOW_SRC`] (0.0.0.0).
//!
//! The same aggregate also takes in tracked sources with fewer than `min_packets` packets in the long
//! window: they get no vector of their own. A forged address of a spoofed flood sends one packet, which
//! looks exactly like one benign connection attempt; judged alone, either every such attempt would look
//! like a flood or no spoofed flood would. Judged together, a spoofed flood is one very loud "source"
//! with a very large `sources` count, and memory stays bounded however many addresses are forged.

use std::{collections::HashMap, hash::BuildHasher, net::IpAddr, time::Duration};

use chrono::{DateTime, Utc};
use netguard_common::{FlowKey, FlowStats};
use serde::Serialize;

use super::{
    bucket::{Bucket, Gauges, sat},
    config::ExtractorConfig,
    features::{self, FeatureVector, WindowView},
    flows::{FlowDelta, FlowTable},
    sketch::{Hll, hash_ip},
};
use crate::datapath::flow_src;

/// Source address of the aggregate vector: sources beyond the tracking cap, and sources too small to
/// judge alone (never a real sender, never blocked).
pub const OVERFLOW_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// For metrics (`netguard_detect_sources_*`) and `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExtractorStats {
    pub tracked_sources: usize,
    pub max_sources: usize,
    /// Sources that lost their slot (or never got one) because of the cap, since start; their state
    /// went to the overflow aggregate.
    pub evicted_total: u64,
    /// Distinct sources folded into the overflow aggregate in the last closed tick (estimate): nonzero
    /// means the cap is hit, typically by a spoofed-source flood.
    pub overflow_sources: u64,
    /// Sum of `overflow_sources` over all ticks.
    pub overflow_sources_total: u64,
    /// Tracked sources too small to judge alone in the last closed tick (in the aggregate vector).
    pub small_sources: usize,
    /// Flows whose previous totals are remembered (bounded by the kernel flow table).
    pub flows_tracked: usize,
}

#[derive(Clone)]
struct Source {
    ring: Box<[Bucket]>,
    gauges: Gauges,
    /// Snapshot whose flows the gauges describe; older gauges read as zero.
    gauge_seq: u64,
    /// Last tick with packets or failed logins.
    last_active: u64,
}

impl Source {
    fn new(ring_len: usize) -> Self {
        let ring = (0..ring_len)
            .map(|_| Bucket {
                tick: u64::MAX,
                ..Bucket::default()
            })
            .collect();
        Source {
            ring,
            gauges: Gauges::default(),
            gauge_seq: 0,
            last_active: 0,
        }
    }

    fn bucket(&mut self, tick: u64) -> &mut Bucket {
        let n = self.ring.len();
        let b = &mut self.ring[(tick % n as u64) as usize];
        if b.tick != tick {
            *b = Bucket {
                tick,
                ..Bucket::default()
            };
        }
        b
    }

    fn gauges(&mut self, seq: u64) -> &mut Gauges {
        if self.gauge_seq != seq {
            self.gauges = Gauges::default();
            self.gauge_seq = seq;
        }
        &mut self.gauges
    }

    /// Buckets of the window ending at `tick`.
    fn window(&self, tick: u64) -> impl Iterator<Item = &Bucket> {
        let n = self.ring.len() as u64;
        self.ring
            .iter()
            .filter(move |b| b.tick <= tick && b.tick + n > tick)
    }
}

/// An untracked source seen in the current tick, waiting for admission at the tick's close.
struct Pending {
    bucket: Bucket,
    gauges: Gauges,
    gauge_seq: u64,
}

pub struct Extractor {
    cfg: ExtractorConfig,
    ring_len: usize,
    /// The open tick.
    tick: u64,
    /// Length in seconds of each closed tick, by ring slot, with the tick it belongs to.
    durations: Vec<(u64, f64)>,
    flows: FlowTable,
    obs_seq: u64,
    last_obs_mono: Option<u64>,
    prev_close_mono: Option<u64>,
    sources: HashMap<IpAddr, Source>,
    pending: HashMap<IpAddr, Pending>,
    overflow: Source,
    overflow_hll: Hll,
    evicted_total: u64,
    overflow_sources: u64,
    overflow_sources_total: u64,
    small_sources: usize,
    /// Key of the distinct-count sketches (see `Bucket::add_flow`).
    salt: u64,
}

impl Extractor {
    pub fn new(cfg: ExtractorConfig) -> Self {
        let tick = cfg.tick.max(Duration::from_millis(1));
        let ring_len = (cfg.long_window.as_secs_f64() / tick.as_secs_f64())
            .round()
            .clamp(1.0, 3600.0) as usize;
        Extractor {
            ring_len,
            tick: 0,
            durations: vec![(u64::MAX, 0.0); ring_len],
            flows: FlowTable::default(),
            obs_seq: 0,
            last_obs_mono: None,
            prev_close_mono: None,
            sources: HashMap::new(),
            pending: HashMap::new(),
            overflow: Source::new(ring_len),
            overflow_hll: Hll::default(),
            evicted_total: 0,
            overflow_sources: 0,
            overflow_sources_total: 0,
            small_sources: 0,
            salt: std::hash::RandomState::new().hash_one(0x6e67_u64),
            cfg,
        }
    }

    /// An extractor whose distinct-count sketches use `salt` instead of a random key: the simulator's
    /// runs are then fully determined by their seed, like the rest of the simulated traffic.
    #[cfg(test)]
    pub(crate) fn with_salt(cfg: ExtractorConfig, salt: u64) -> Self {
        Extractor {
            salt,
            ..Self::new(cfg)
        }
    }

    pub fn config(&self) -> &ExtractorConfig {
        &self.cfg
    }

    pub fn stats(&self) -> ExtractorStats {
        ExtractorStats {
            tracked_sources: self.sources.len(),
            max_sources: self.cfg.max_sources,
            evicted_total: self.evicted_total,
            overflow_sources: self.overflow_sources,
            overflow_sources_total: self.overflow_sources_total,
            small_sources: self.small_sources,
            flows_tracked: self.flows.len(),
        }
    }

    /// One call per tick with the whole flow table and CLOCK_MONOTONIC_COARSE now (ns), the clock of the
    /// flows' first/last_seen. Deltas are taken against the previous call; on the very first call nothing
    /// is known about the past, so every flow only sets a baseline.
    pub fn observe_flows(&mut self, flows: &[(FlowKey, FlowStats)], mono_now_ns: u64) {
        self.obs_seq += 1;
        let boundary = self.last_obs_mono;
        let long_ns = self.cfg.long_window.as_nanos() as u64;
        let forget_ns = self.cfg.flow_forget_after.as_nanos() as u64;
        self.flows.begin(flows.len());
        // Batches of 16: prefetch every slot of the batch first, so their cache misses overlap.
        let mut hashes = [None; 16];
        for batch in flows.chunks(16) {
            for ((key, st), h) in batch.iter().zip(hashes.iter_mut()) {
                *h = self.flows.prepare(key, st, boundary);
            }
            for ((key, st), h) in batch.iter().zip(hashes) {
                let d = self.flows.delta(h, st, boundary, mono_now_ns, forget_ns);
                let in_window = st.last_seen_ns.saturating_add(long_ns) >= mono_now_ns;
                if d.packets > 0 || in_window {
                    self.account(flow_src(key), key, st, &d, in_window);
                }
            }
        }
        self.flows.end(mono_now_ns, forget_ns);
        self.last_obs_mono = Some(mono_now_ns);
    }

    fn account(
        &mut self,
        src: IpAddr,
        key: &FlowKey,
        st: &FlowStats,
        d: &FlowDelta,
        in_window: bool,
    ) {
        let (tick, seq, salt) = (self.tick, self.obs_seq, self.salt);
        let ssh = self.cfg.ssh_ports.contains(&key.dst_port);
        let active = d.packets > 0;
        if let Some(s) = self.sources.get_mut(&src) {
            if active {
                s.last_active = tick;
                s.bucket(tick).add_flow(key, st, d, salt, ssh);
            }
            if in_window {
                s.gauges(seq).add_flow(key, st);
            }
            return;
        }
        // Untracked: a source only starts being tracked for traffic in this tick, not for idle flows.
        if !self.pending.contains_key(&src) {
            if !active {
                return;
            }
            // Beyond even the pending cap, or the unspecified address (spoofed, and the aggregate's own
            // name): straight into the aggregate.
            if self.pending.len() >= self.pending_cap() || src.is_unspecified() {
                self.overflow_hll.insert(hash_ip(&src));
                self.overflow.last_active = tick;
                self.overflow.bucket(tick).add_flow(key, st, d, salt, ssh);
                if in_window {
                    self.overflow.gauges(seq).add_flow(key, st);
                }
                return;
            }
        }
        let p = self.pending.entry(src).or_insert_with(|| Pending {
            bucket: Bucket {
                tick,
                ..Bucket::default()
            },
            gauges: Gauges::default(),
            gauge_seq: seq,
        });
        if active {
            p.bucket.add_flow(key, st, d, salt, ssh);
        }
        if in_window {
            if p.gauge_seq != seq {
                p.gauges = Gauges::default();
                p.gauge_seq = seq;
            }
            p.gauges.add_flow(key, st);
        }
    }

    /// Failed logins reported by host events (auth.log, agents) for `src`, counted in the open tick.
    pub fn observe_failed_auth(&mut self, src: IpAddr, count: u32) {
        let tick = self.tick;
        if let Some(s) = self.sources.get_mut(&src) {
            s.last_active = tick;
            let b = s.bucket(tick);
            b.failed_auth = b.failed_auth.saturating_add(count);
        } else if !src.is_unspecified()
            && (self.pending.len() < self.pending_cap() || self.pending.contains_key(&src))
        {
            let seq = self.obs_seq;
            let p = self.pending.entry(src).or_insert_with(|| Pending {
                bucket: Bucket {
                    tick,
                    ..Bucket::default()
                },
                gauges: Gauges::default(),
                gauge_seq: seq,
            });
            p.bucket.failed_auth = p.bucket.failed_auth.saturating_add(count);
        } else {
            self.overflow_hll.insert(hash_ip(&src));
            self.overflow.last_active = tick;
            let b = self.overflow.bucket(tick);
            b.failed_auth = b.failed_auth.saturating_add(count);
        }
    }

    /// Closes the open tick, after expiring idle sources and admitting new ones within the cap: one
    /// vector per source with at least `min_packets` packets (or a failed login) in the long window,
    /// sorted by address, then the aggregate ([`OVERFLOW_SRC`]) of the rest and of untracked sources if
    /// any of them was active.
    pub fn close_window(&mut self, now: DateTime<Utc>) -> Vec<FeatureVector> {
        let tick = self.tick;
        let n = self.ring_len as u64;
        // Real elapsed time between the snapshots that bound this tick, so that a late tick does not
        // inflate rates; the nominal tick when there is no timing (first tick, no snapshot).
        let nominal = self.cfg.tick.as_secs_f64();
        let secs = match (self.last_obs_mono, self.prev_close_mono) {
            (Some(a), Some(b)) if a > b => (a - b) as f64 / 1e9,
            _ => nominal,
        };
        let secs = secs.clamp(1e-3, self.cfg.long_window.as_secs_f64().max(nominal));
        self.durations[(tick % n) as usize] = (tick, secs);
        self.prev_close_mono = self.last_obs_mono;

        self.sources.retain(|_, s| s.last_active + n > tick);
        self.admit(tick);
        self.overflow_sources = self.overflow_hll.estimate().round() as u64;
        self.overflow_sources_total += self.overflow_sources;
        if self.overflow.ring[(tick % n) as usize].tick == tick {
            self.overflow.bucket(tick).sources = sat(self.overflow_sources);
        }
        self.overflow_hll.clear();

        let long_secs: f64 = self
            .durations
            .iter()
            .filter(|(t, _)| *t <= tick && t + n > tick)
            .map(|(_, s)| s)
            .sum();
        // Sources with too few packets to judge alone (one unanswered SYN, a forged address of a
        // spoofed flood) are judged together, in the aggregate, with the untracked ones.
        let seq = self.obs_seq;
        let min = u64::from(self.cfg.min_packets);
        let mut aggregate = self.overflow.clone();
        let mut small = 0usize;
        let mut out = Vec::with_capacity(self.sources.len() + 1);
        for (ip, s) in &self.sources {
            let (packets, failed) = s
                .window(tick)
                .fold((0, 0), |(p, f), b| (p + b.packets, f + b.failed_auth));
            if packets >= min || failed > 0 {
                out.push(vector(*ip, s, tick, secs, long_secs, seq, now, false));
                continue;
            }
            small += 1;
            for b in s.window(tick).filter(|b| b.active()) {
                let a = aggregate.bucket(b.tick);
                a.merge(&Bucket {
                    sources: 0,
                    ..b.clone()
                });
                a.sources = a.sources.saturating_add(1);
            }
            aggregate.last_active = aggregate.last_active.max(s.last_active);
            if s.gauge_seq == seq {
                aggregate.gauges(seq).merge(&s.gauges);
            }
        }
        self.small_sources = small;
        out.sort_by_key(|v| v.src);
        if aggregate.last_active + n > tick && aggregate.window(tick).any(Bucket::active) {
            out.push(vector(
                OVERFLOW_SRC,
                &aggregate,
                tick,
                secs,
                long_secs,
                seq,
                now,
                true,
            ));
        }
        self.tick += 1;
        out
    }

    /// Untracked sources considered for admission per tick: enough that a loud newcomer is rarely
    /// missed, bounded so a spoofed flood cannot grow it (about 150 bytes each).
    fn pending_cap(&self) -> usize {
        2 * self.cfg.max_sources.max(4096)
    }

    /// Moves this tick's pending sources into the tracked set within the cap (see the module doc).
    fn admit(&mut self, tick: u64) {
        let mut cands: Vec<(IpAddr, Pending)> = self
            .pending
            .drain()
            .filter(|(_, p)| p.bucket.active())
            .collect();
        if self.pending.capacity() > 4 * 1024 {
            self.pending.shrink_to(1024);
        }
        if cands.is_empty() {
            return;
        }
        let cap = self.cfg.max_sources;
        let free = cap.saturating_sub(self.sources.len());
        if cands.len() > free {
            // LRU: tracked sources idle in this tick, least recently active first.
            let need = cands.len() - free;
            let mut idle: Vec<(u64, IpAddr)> = self
                .sources
                .iter()
                .filter(|(_, s)| s.last_active < tick)
                .map(|(ip, s)| (s.last_active, *ip))
                .collect();
            idle.sort_unstable();
            for (_, ip) in idle.into_iter().take(need) {
                if let Some(s) = self.sources.remove(&ip) {
                    self.fold_source(&ip, &s, tick);
                    self.evicted_total += 1;
                }
            }
        }
        let free = cap.saturating_sub(self.sources.len());
        if cands.len() > free {
            // Heaviest newcomers first (ties by address, for reproducible results); the rest overflow.
            cands.sort_unstable_by(|a, b| {
                b.1.bucket
                    .packets
                    .cmp(&a.1.bucket.packets)
                    .then(a.0.cmp(&b.0))
            });
            for (ip, p) in cands.drain(free..) {
                self.fold_pending(&ip, &p, tick);
                self.evicted_total += 1;
            }
        }
        for (ip, p) in cands {
            let mut s = Source::new(self.ring_len);
            s.last_active = tick;
            *s.bucket(tick) = Bucket {
                sources: 1,
                ..p.bucket
            };
            s.gauges = p.gauges;
            s.gauge_seq = p.gauge_seq;
            self.sources.insert(ip, s);
        }
    }

    fn fold_pending(&mut self, ip: &IpAddr, p: &Pending, tick: u64) {
        self.overflow_hll.insert(hash_ip(ip));
        self.overflow.last_active = tick;
        self.overflow.bucket(tick).merge(&p.bucket);
        if p.gauge_seq == self.obs_seq {
            self.overflow.gauges(self.obs_seq).merge(&p.gauges);
        }
    }

    fn fold_source(&mut self, ip: &IpAddr, s: &Source, tick: u64) {
        self.overflow_hll.insert(hash_ip(ip));
        for b in s.window(tick) {
            if b.active() {
                self.overflow.bucket(b.tick).merge(&Bucket {
                    sources: 0,
                    ..b.clone()
                });
            }
        }
        self.overflow.last_active = self.overflow.last_active.max(s.last_active);
        if s.gauge_seq == self.obs_seq {
            self.overflow.gauges(self.obs_seq).merge(&s.gauges);
        }
    }
}

/// Builds one source's vector from its ring.
#[allow(clippy::too_many_arguments)]
fn vector(
    src: IpAddr,
    s: &Source,
    tick: u64,
    short_secs: f64,
    long_secs: f64,
    seq: u64,
    now: DateTime<Utc>,
    aggregate: bool,
) -> FeatureVector {
    let empty = Bucket::default();
    let mut long = Bucket::default();
    let mut short = &empty;
    let (mut active_ticks, mut peak_sources) = (0u32, 0u32);
    for b in s.window(tick) {
        long.merge(b);
        if b.tick == tick {
            short = b;
        }
        if b.active() {
            active_ticks += 1;
        }
        peak_sources = peak_sources.max(b.sources);
    }
    let no_gauges = Gauges::default();
    let gauges = if s.gauge_seq == seq {
        &s.gauges
    } else {
        &no_gauges
    };
    let view = WindowView {
        short,
        long: &long,
        short_secs,
        long_secs,
        gauges,
        active_ticks,
        sources: if aggregate {
            f64::from(peak_sources)
        } else {
            1.0
        },
    };
    FeatureVector {
        src,
        ts: now,
        values: features::compute(&view),
        dst_ip: short.dest.ip(),
        dst_port: short.dest.port(),
    }
}

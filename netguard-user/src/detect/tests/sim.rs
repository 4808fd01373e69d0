//! A small stand-in for the kernel flow table, for driving the extractor in tests: packets update
//! per-flow counters exactly as the XDP program does, and `tick` hands the table to the extractor.

use std::{collections::HashMap, net::IpAddr};

use chrono::{DateTime, TimeZone, Utc};
use netguard_common::{FAMILY_V4, FlowKey, FlowStats, proto, tcp_flags as tf};
use rand_chacha::{
    ChaCha8Rng,
    rand_core::{RngCore, SeedableRng},
};

use crate::detect::{Extractor, ExtractorConfig, FeatureVector};

pub const SEC: u64 = 1_000_000_000;

pub fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

pub fn key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> FlowKey {
    let mut k = FlowKey {
        src_port: sport,
        dst_port: dport,
        proto,
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    k.src[..4].copy_from_slice(&src);
    k.dst[..4].copy_from_slice(&dst);
    k
}

pub struct Sim {
    pub flows: HashMap<FlowKey, FlowStats>,
    /// CLOCK_MONOTONIC_COARSE now.
    pub mono: u64,
    pub ex: Extractor,
    pub t0: DateTime<Utc>,
    pub rng: ChaCha8Rng,
    /// Where packets of the open tick are stamped: spread over the tick.
    pub in_tick: u64,
}

impl Sim {
    pub fn new(cfg: ExtractorConfig, seed: u64) -> Self {
        Sim {
            flows: HashMap::new(),
            mono: 1_000 * SEC,
            ex: Extractor::with_salt(cfg, crate::detect::sketch::mix64(seed)),
            t0: Utc.timestamp_opt(1_714_560_000, 0).unwrap(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_tick: 0,
        }
    }

    pub fn rand(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    /// One packet, counted as the kernel counts it.
    pub fn pkt(&mut self, k: FlowKey, len: u64, flags: u32) {
        self.in_tick = (self.in_tick + 997) % (SEC - 1);
        let now = self.mono + 1 + self.in_tick;
        let st = self.flows.entry(k).or_insert(FlowStats {
            first_seen_ns: now,
            ..FlowStats::default()
        });
        st.packets += 1;
        st.bytes += len;
        st.last_seen_ns = now;
        if k.proto == proto::TCP {
            let (syn, ack) = (flags & tf::SYN != 0, flags & tf::ACK != 0);
            st.syn += u32::from(syn && !ack);
            st.syn_ack += u32::from(syn && ack);
            st.ack += u32::from(ack && !syn);
            st.rst += u32::from(flags & tf::RST != 0);
            st.fin += u32::from(flags & tf::FIN != 0);
            st.tcp_flags |= flags;
        }
    }

    /// A complete, short TCP connection from the client's side: SYN, ACKs with data, FIN.
    pub fn tcp_conn(&mut self, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, data_pkts: u64) {
        let k = key(src, dst, sport, dport, proto::TCP);
        self.pkt(k, 60, tf::SYN);
        self.pkt(k, 52, tf::ACK);
        for _ in 0..data_pkts {
            let len = 52 + self.rand(1400);
            self.pkt(k, len, tf::ACK | tf::PSH);
        }
        self.pkt(k, 52, tf::ACK | tf::FIN);
    }

    /// Advances the clock one second, snapshots the table into the extractor and closes the window.
    pub fn tick(&mut self) -> Vec<FeatureVector> {
        self.tick_after(SEC)
    }

    pub fn tick_after(&mut self, ns: u64) -> Vec<FeatureVector> {
        self.mono += ns;
        self.in_tick = 0;
        // The kernel table is an LRU of bounded size; here flows idle for 60 s simply go.
        let horizon = self.mono.saturating_sub(60 * SEC);
        self.flows.retain(|_, s| s.last_seen_ns >= horizon);
        let snapshot: Vec<(FlowKey, FlowStats)> =
            self.flows.iter().map(|(k, s)| (*k, *s)).collect();
        self.ex.observe_flows(&snapshot, self.mono);
        let now = self.t0 + chrono::Duration::nanoseconds((self.mono - 1_000 * SEC) as i64);
        self.ex.close_window(now)
    }

    /// The vector of `src` among `vs`.
    pub fn of(vs: &[FeatureVector], src: [u8; 4]) -> Option<FeatureVector> {
        vs.iter().find(|v| v.src == v4(src)).cloned()
    }
}

/// Lab-like scenarios, one source each, for the training tests: returns (label, vectors of `src`).
pub fn scenario(label: &str, seed: u64, ticks: usize) -> Vec<FeatureVector> {
    let mut sim = Sim::new(ExtractorConfig::default(), seed);
    let src = [10, 1, (seed % 200) as u8, 2 + (seed % 50) as u8];
    let dst = [10, 0, 0, 1];
    let rate = |sim: &mut Sim, lo: u64, hi: u64| lo + sim.rand(hi - lo);
    let (r1, r2) = (rate(&mut sim, 0, 1000), rate(&mut sim, 0, 1000));
    let mut out = Vec::new();
    let mut sport: u16 = 1024 + (seed as u16 % 1000);
    sim.tick(); // baseline snapshot
    for t in 0..ticks {
        match label {
            "benign" => match seed % 5 {
                0 => {
                    let n = 1 + sim.rand(8);
                    for _ in 0..n {
                        sport = sport.wrapping_add(1).max(1024);
                        let d = 3 + sim.rand(20);
                        sim.tcp_conn(src, dst, sport, 80, d);
                    }
                }
                1 => {
                    let k = key(src, dst, 40000, 5201, proto::TCP);
                    for _ in 0..(200 + r1 * 5) {
                        sim.pkt(k, 1500, tf::ACK);
                    }
                }
                2 => {
                    let k = key(src, dst, 40001, 5201, proto::UDP);
                    for _ in 0..(50 + r1) {
                        let len = 1400 + sim.rand(70);
                        sim.pkt(k, len, 0);
                    }
                }
                3 => {
                    let k = key(src, dst, 8, 0, proto::ICMP);
                    sim.pkt(k, 98, 0);
                }
                _ => {
                    let k = key(src, dst, 50000, 22, proto::TCP);
                    if t == 0 {
                        sim.pkt(k, 60, tf::SYN);
                    }
                    for _ in 0..(2 + sim.rand(30)) {
                        let len = 52 + sim.rand(200);
                        sim.pkt(k, len, tf::ACK | tf::PSH);
                    }
                }
            },
            "syn_flood" => {
                for _ in 0..(300 + r1 * 3) {
                    sport = sport.wrapping_add(1);
                    sim.pkt(key(src, dst, sport, 80, proto::TCP), 54, tf::SYN);
                }
            }
            "udp_flood" => {
                for _ in 0..(500 + r1 * 3) {
                    sport = sport.wrapping_add(1);
                    sim.pkt(key(src, dst, sport, 53, proto::UDP), 42 + r2 % 100, 0);
                }
            }
            "icmp_flood" => {
                let k = key(src, dst, 8, 0, proto::ICMP);
                for _ in 0..(300 + r1 * 3) {
                    sim.pkt(k, 42 + r2 % 1000, 0);
                }
            }
            "port_scan" => {
                let per_tick = 20 + r1 / 4;
                for i in 0..per_tick {
                    let port = ((t as u64 * per_tick + i) % 65000 + 1) as u16;
                    let k = key(src, dst, 40000 + (seed as u16 % 20000), port, proto::TCP);
                    sim.pkt(k, 58, tf::SYN);
                    if sim.rand(10) == 0 {
                        sim.pkt(k, 54, tf::RST);
                    }
                }
            }
            "ssh_brute_force" => {
                let conns = 1 + sim.rand(4);
                for _ in 0..conns {
                    sport = sport.wrapping_add(1).max(1024);
                    let d = 12 + sim.rand(10);
                    sim.tcp_conn(src, dst, sport, 22, d);
                }
                let fails = sim.rand(4) as u32;
                sim.ex.observe_failed_auth(v4(src), fails);
            }
            other => panic!("no scenario {other}"),
        }
        if let Some(v) = Sim::of(&sim.tick(), src) {
            out.push(v);
        }
    }
    out
}

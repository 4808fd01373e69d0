//! The feature schema: the ordered list of per-source window features that training and serving share.
//!
//! Bump [`SCHEMA_VERSION`] on any change to the list, its order, or what a feature means: recorded data
//! sets and trained models carry the version and are refused when it differs, so a model can never be
//! fed columns that mean something else than what it was fitted on.
//!
//! Windows: `_1s` is the last closed tick, `_10s` the long window (`ExtractorConfig::long_window`);
//! unsuffixed gauges describe the flows of the source that are active in the long window as of the last
//! snapshot. XDP sees ingress only, so everything is what the *source* sends:
//! - `half_open` (Zeek's S0): flows where the source sent a SYN but never an ACK (nor RST): nothing
//!   completed the handshake. It also covers attempts the target refused (Zeek's REJ), because the
//!   target's RST leaves by egress, which XDP does not see.
//! - `syn_rst`: flows where the source sent SYN, then RST, and never ACK: the signature of stealth (-sS)
//!   probes answered by SYN-ACK, the closest ingress-only view of rejected connections.
//! - `syn_ratio_10s`: SYN / (SYN + SYN-ACK + ACK) packets, the SYN to SYN-ACK/ACK ratio r mapped to
//!   r / (1 + r) so it stays in [0, 1].
//! - `dst_ports_*` count TCP/UDP destination ports of traffic the source initiates: replies to this
//!   host's own connections (a SYN-ACK flow, or a well-known source port talking to an ephemeral port)
//!   are left out, or every busy server we talk to would look like a port scanner.
//! - `pkt_size_var_10s` is the packet-weighted variance of per-flow mean packet sizes: the kernel keeps
//!   byte and packet totals, not per-packet sizes.
//! - `sources` is 1 for a real source; for the aggregate (`OVERFLOW_SRC`: untracked sources and those
//!   too small to judge alone) it is the peak number of sources folded into it per tick: a spoofed flood
//!   is itself a signal.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::bucket::{Bucket, Gauges};

/// Version of [`FEATURES`]. Recorded data and models carry it.
/// History: v1 gave every active source a vector; v2 (same columns) judges sources with fewer than
/// `min_packets` packets only within the aggregate `0.0.0.0` vector, which changes what that row means.
pub const SCHEMA_VERSION: u32 = 2;

macro_rules! schema {
    ($($var:ident = $name:literal),* $(,)?) => {
        /// Ordered feature names (snake_case): the columns of every vector, CSV and model.
        pub const FEATURES: &[&str] = &[$($name),*];

        /// Index of each feature in [`FEATURES`] and in `FeatureVector::values`, generated from the same
        /// list so the two cannot drift apart.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum F { $($var),* }
    };
}

schema! {
    PktsPerS1s = "pkts_per_s_1s",
    BytesPerS1s = "bytes_per_s_1s",
    SynPerS1s = "syn_per_s_1s",
    NewFlowsPerS1s = "new_flows_per_s_1s",
    DstPorts1s = "dst_ports_1s",
    DstHosts1s = "dst_hosts_1s",
    FailedAuth1s = "failed_auth_1s",
    PktsPerS10s = "pkts_per_s_10s",
    BytesPerS10s = "bytes_per_s_10s",
    SynPerS10s = "syn_per_s_10s",
    NewFlowsPerS10s = "new_flows_per_s_10s",
    DstPorts10s = "dst_ports_10s",
    DstHosts10s = "dst_hosts_10s",
    FailedAuth10s = "failed_auth_10s",
    SynRatio10s = "syn_ratio_10s",
    RstPerS10s = "rst_per_s_10s",
    HalfOpen = "half_open",
    HalfOpenRatio = "half_open_ratio",
    SynRst = "syn_rst",
    PktSizeMean10s = "pkt_size_mean_10s",
    PktSizeVar10s = "pkt_size_var_10s",
    TcpShare10s = "tcp_share_10s",
    UdpShare10s = "udp_share_10s",
    IcmpShare10s = "icmp_share_10s",
    FragShare10s = "frag_share_10s",
    FlowsActive = "flows_active",
    PktsPerFlow10s = "pkts_per_flow_10s",
    SshNewFlows10s = "ssh_new_flows_10s",
    ActiveSecs10s = "active_secs_10s",
    Sources = "sources",
}

impl F {
    pub const fn name(self) -> &'static str {
        FEATURES[self as usize]
    }
}

/// Position of a feature name in [`FEATURES`].
pub fn feature_index(name: &str) -> Option<usize> {
    FEATURES.iter().position(|f| *f == name)
}

/// One source's window, as the model and rules see it. `values[i]` is `FEATURES[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureVector {
    pub src: IpAddr,
    /// When the window closed.
    pub ts: DateTime<Utc>,
    pub values: Vec<f32>,
    /// Where the source sent in the closing tick, when that was one host (and port): the alert's
    /// `dst_ip` and `dst_port`. Not a feature: the model never sees it.
    pub dst_ip: Option<IpAddr>,
    pub dst_port: Option<u16>,
}

impl FeatureVector {
    pub fn get(&self, f: F) -> f32 {
        self.values.get(f as usize).copied().unwrap_or(0.0)
    }
}

/// What the window code hands over to become a vector: the last tick, the long-window sum, their
/// lengths in seconds, and the gauges of the last snapshot.
pub(crate) struct WindowView<'a> {
    pub short: &'a Bucket,
    pub long: &'a Bucket,
    pub short_secs: f64,
    pub long_secs: f64,
    pub gauges: &'a Gauges,
    pub active_ticks: u32,
    pub sources: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Computes the values of one vector. Everything is finite: rates divide by at least 1 ms and ratios of
/// nothing are 0.
pub(crate) fn compute(w: &WindowView<'_>) -> Vec<f32> {
    let (s, l, g) = (w.short, w.long, w.gauges);
    let ss = w.short_secs.max(1e-3);
    let ls = w.long_secs.max(1e-3);
    let lp = l.packets as f64;
    let mean = ratio(l.bytes as f64, lp);
    let var = (ratio(l.size_sq, lp) - mean * mean).max(0.0);
    let mut v = vec![0f32; FEATURES.len()];
    let mut set = |f: F, x: f64| v[f as usize] = if x.is_finite() { x as f32 } else { 0.0 };
    set(F::PktsPerS1s, s.packets as f64 / ss);
    set(F::BytesPerS1s, s.bytes as f64 / ss);
    set(F::SynPerS1s, f64::from(s.syn) / ss);
    set(F::NewFlowsPerS1s, f64::from(s.new_flows) / ss);
    set(F::DstPorts1s, s.ports.estimate());
    set(F::DstHosts1s, s.hosts.estimate());
    set(F::FailedAuth1s, f64::from(s.failed_auth));
    set(F::PktsPerS10s, lp / ls);
    set(F::BytesPerS10s, l.bytes as f64 / ls);
    set(F::SynPerS10s, f64::from(l.syn) / ls);
    set(F::NewFlowsPerS10s, f64::from(l.new_flows) / ls);
    set(F::DstPorts10s, l.ports.estimate());
    set(F::DstHosts10s, l.hosts.estimate());
    set(F::FailedAuth10s, f64::from(l.failed_auth));
    let syn = f64::from(l.syn);
    set(
        F::SynRatio10s,
        ratio(syn, syn + f64::from(l.syn_ack) + f64::from(l.ack)),
    );
    set(F::RstPerS10s, f64::from(l.rst) / ls);
    set(F::HalfOpen, f64::from(g.half_open));
    set(
        F::HalfOpenRatio,
        ratio(f64::from(g.half_open), f64::from(g.tcp_flows)),
    );
    set(F::SynRst, f64::from(g.syn_rst));
    set(F::PktSizeMean10s, mean);
    set(F::PktSizeVar10s, var);
    set(F::TcpShare10s, ratio(f64::from(l.tcp), lp));
    set(F::UdpShare10s, ratio(f64::from(l.udp), lp));
    set(F::IcmpShare10s, ratio(f64::from(l.icmp), lp));
    set(F::FragShare10s, ratio(f64::from(l.frags), lp));
    set(F::FlowsActive, f64::from(g.flows));
    set(F::PktsPerFlow10s, ratio(lp, f64::from(g.flows.max(1))));
    set(F::SshNewFlows10s, f64::from(l.ssh_new));
    set(F::ActiveSecs10s, f64::from(w.active_ticks));
    set(F::Sources, w.sources);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_indexed() {
        for (i, a) in FEATURES.iter().enumerate() {
            assert!(
                a.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{a}"
            );
            assert_eq!(feature_index(a), Some(i));
            assert!(!FEATURES[i + 1..].contains(a), "{a} twice");
        }
        assert_eq!(F::Sources as usize + 1, FEATURES.len());
        assert_eq!(F::SynRatio10s.name(), "syn_ratio_10s");
    }
}

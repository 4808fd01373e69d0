//! Defining evidence of each alert class: the facts a window must show before any verdict of that
//! class, from the model or a rule, is acted on.
//!
//! The tree is trained on lab scenarios; on a window unlike anything it saw (a download's stream of
//! ACKs, say) it still answers with some class, and that answer can be absurd: `udp_flood` for a
//! source that sent no UDP. These checks are the tree's contract with the world. A verdict whose own
//! evidence contradicts it is rejected (counted in `netguard_detect_verdicts_rejected_total{class}`,
//! logged at debug level) and raises nothing. The facts that passed go into the alert's evidence
//! (`justified_by`), so an operator reads why the sensor believed it.
//!
//! The rate floors follow DESIGN.md's trust rules: a flood is judged against the capacity it
//! threatens, not against the quiet lab. A few hundred packets per second of media, DNS or a
//! download's ACKs threaten nothing on a server; the defaults sit above that.

use serde::{Deserialize, Serialize};

use super::features::{F, FeatureVector};

/// `[detect.evidence]`: the floors of each class's defining evidence.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Share of the window's packets that must be of the flood's protocol (UDP, ICMP).
    pub min_protocol_share: f32,
    /// SYN floods: SYN / (SYN + ACK) in the long window...
    pub min_syn_ratio: f32,
    /// ...share of the source's TCP flows left half-open...
    pub min_half_open_ratio: f32,
    /// ...and SYNs per second (the faster of the last tick and the long window). A server's SYN
    /// backlog (tcp_max_syn_backlog, 4096 by default on a large host) holds each half-open entry
    /// for about a minute of SYN-ACK retries, so 100 SYN/s from one source fills it.
    pub min_syn_pps: f32,
    /// UDP floods: packets per second. RTP voice is ~50/s, a busy DNS or NTP client tens.
    pub min_udp_pps: f32,
    /// ICMP floods: packets per second. Monitoring pings at a few per second; `ping -i 0.01` is 100.
    pub min_icmp_pps: f32,
    /// Port scans: distinct destination ports, or hosts, in the long window.
    pub min_scan_targets: f32,
    /// Port scans: probes leave few packets per flow (a probe is one or two packets); a client that
    /// talks to many services completes its connections and sends more.
    pub max_scan_pkts_per_flow: f32,
    /// SSH brute force without a failed login in the log: new connections to sshd in the long window.
    pub min_ssh_connections: f32,
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            min_protocol_share: 0.7,
            min_syn_ratio: 0.7,
            min_half_open_ratio: 0.5,
            min_syn_pps: 100.0,
            min_udp_pps: 1000.0,
            min_icmp_pps: 500.0,
            min_scan_targets: 10.0,
            max_scan_pkts_per_flow: 4.0,
            min_ssh_connections: 20.0,
        }
    }
}

/// One fact that held, as the alert shows it: `"udp_share_10s 0.98 >= 0.7"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    pub feature: F,
    pub value: f32,
    pub op: &'static str,
    pub bound: f32,
}

impl Fact {
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} {}",
            self.feature.name(),
            round(self.value),
            self.op,
            round(self.bound)
        )
    }
}

fn round(x: f32) -> f64 {
    (f64::from(x) * 1000.0).round() / 1000.0
}

/// Why a verdict was rejected: the first defining fact that did not hold.
#[derive(Clone, Debug, PartialEq)]
pub struct Contradiction {
    pub class: String,
    pub missing: String,
}

impl std::fmt::Display for Contradiction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} needs {}", self.class, self.missing)
    }
}

/// Requirement builder: every `at_least`/`at_most` must hold; `any` groups alternatives.
struct Check<'a> {
    v: &'a FeatureVector,
    facts: Vec<Fact>,
    missing: Option<String>,
}

impl<'a> Check<'a> {
    fn new(v: &'a FeatureVector) -> Self {
        Self {
            v,
            facts: Vec::new(),
            missing: None,
        }
    }

    fn fact(&self, f: F, op: &'static str, bound: f32) -> Option<Fact> {
        let value = self.v.get(f);
        let ok = match op {
            ">=" => value >= bound,
            _ => value <= bound,
        };
        ok.then_some(Fact {
            feature: f,
            value,
            op,
            bound,
        })
    }

    /// At least one of `alts` must hold; the first that does is kept as the fact.
    fn any(mut self, alts: &[(F, &'static str, f32)]) -> Self {
        if self.missing.is_some() {
            return self;
        }
        match alts.iter().find_map(|&(f, op, b)| self.fact(f, op, b)) {
            Some(fact) => self.facts.push(fact),
            None => {
                self.missing = Some(
                    alts.iter()
                        .map(|&(f, op, b)| {
                            format!(
                                "{} {op} {} (is {})",
                                f.name(),
                                round(b),
                                round(self.v.get(f))
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" or "),
                )
            }
        }
        self
    }

    fn at_least(self, f: F, bound: f32) -> Self {
        self.any(&[(f, ">=", bound)])
    }

    fn at_most(self, f: F, bound: f32) -> Self {
        self.any(&[(f, "<=", bound)])
    }

    fn done(self, class: &str) -> Result<Vec<Fact>, Contradiction> {
        match self.missing {
            None => Ok(self.facts),
            Some(missing) => Err(Contradiction {
                class: class.into(),
                missing,
            }),
        }
    }
}

/// Checks a verdict of `class` against the window it was made on. `Ok` carries the facts that
/// justify it; a class without defining evidence here (none today) is accepted as it is.
pub fn check(
    class: &str,
    v: &FeatureVector,
    cfg: &EvidenceConfig,
) -> Result<Vec<Fact>, Contradiction> {
    let c = Check::new(v);
    match class {
        "syn_flood" => c
            .at_least(F::SynRatio10s, cfg.min_syn_ratio)
            // Handshakes left unfinished: half-open flows, or flows the source reset without ever
            // acknowledging. A flooder with a real address at an OPEN port gets SYN-ACKs, which its
            // own kernel answers with RST: those flows are `syn_rst`, not half-open (the lab's
            // 1,000-5,000 SYN/s floods at ports 22 and 80 show 0 half-open and all flows `syn_rst`).
            .any(&[
                (F::HalfOpenRatio, ">=", cfg.min_half_open_ratio),
                (
                    F::SynRst,
                    ">=",
                    cfg.min_half_open_ratio * v.get(F::FlowsActive).max(1.0),
                ),
            ])
            .any(&[
                (F::SynPerS1s, ">=", cfg.min_syn_pps),
                (F::SynPerS10s, ">=", cfg.min_syn_pps),
            ])
            .done(class),
        "udp_flood" => c
            .at_least(F::UdpShare10s, cfg.min_protocol_share)
            .any(&[
                (F::PktsPerS1s, ">=", cfg.min_udp_pps),
                (F::PktsPerS10s, ">=", cfg.min_udp_pps),
            ])
            .done(class),
        "icmp_flood" => c
            .at_least(F::IcmpShare10s, cfg.min_protocol_share)
            .any(&[
                (F::PktsPerS1s, ">=", cfg.min_icmp_pps),
                (F::PktsPerS10s, ">=", cfg.min_icmp_pps),
            ])
            .done(class),
        "port_scan" => c
            .any(&[
                (F::DstPorts10s, ">=", cfg.min_scan_targets),
                (F::DstHosts10s, ">=", cfg.min_scan_targets),
            ])
            // Few completed connections: probes are one or two packets, or left half-open.
            .any(&[
                (F::PktsPerFlow10s, "<=", cfg.max_scan_pkts_per_flow),
                (F::HalfOpenRatio, ">=", 0.5),
            ])
            .done(class),
        "ssh_brute_force" | "brute_force" => c
            .any(&[
                (F::FailedAuth10s, ">=", 1.0),
                (F::SshNewFlows10s, ">=", cfg.min_ssh_connections),
            ])
            .done(class),
        _ => c.at_most(F::Sources, f32::MAX).done(class),
    }
}

/// Whether the facts of a verdict include evidence that only a real peer can produce: a failed
/// login is logged by sshd after the TCP handshake completed (an agent's event likewise comes from a
/// real session). Everything else here (rates, SYNs, ports, new connections) a forged source address
/// can produce.
pub fn has_log_evidence(v: &FeatureVector) -> bool {
    v.get(F::FailedAuth10s) >= 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::FEATURES;

    fn vector(set: &[(F, f32)]) -> FeatureVector {
        let mut values = vec![0.0; FEATURES.len()];
        values[F::Sources as usize] = 1.0;
        for (f, x) in set {
            values[*f as usize] = *x;
        }
        FeatureVector {
            src: "192.0.2.7".parse().unwrap(),
            ts: chrono::Utc::now(),
            values,
            dst_ip: None,
            dst_port: None,
        }
    }

    fn cfg() -> EvidenceConfig {
        EvidenceConfig::default()
    }

    #[test]
    fn a_download_ack_stream_is_no_udp_flood() {
        // What the sensor sees of a client downloading a large file: ~2,000 ACKs/s, one TCP flow.
        let acks = vector(&[
            (F::PktsPerS1s, 2000.0),
            (F::PktsPerS10s, 1900.0),
            (F::TcpShare10s, 1.0),
            (F::UdpShare10s, 0.0),
            (F::PktSizeMean10s, 66.0),
            (F::PktsPerFlow10s, 19_000.0),
            (F::FlowsActive, 1.0),
        ]);
        let e = check("udp_flood", &acks, &cfg()).unwrap_err();
        assert!(e.missing.contains("udp_share_10s >= 0.7 (is 0)"), "{e}");
        assert!(check("icmp_flood", &acks, &cfg()).is_err());
        assert!(check("syn_flood", &acks, &cfg()).is_err());
        assert!(check("port_scan", &acks, &cfg()).is_err());
        assert!(check("ssh_brute_force", &acks, &cfg()).is_err());
    }

    #[test]
    fn media_and_dns_rates_are_not_floods() {
        let rtp = vector(&[
            (F::PktsPerS1s, 50.0),
            (F::PktsPerS10s, 50.0),
            (F::UdpShare10s, 1.0),
            (F::PktSizeMean10s, 170.0),
        ]);
        let e = check("udp_flood", &rtp, &cfg()).unwrap_err();
        assert!(e.missing.contains("pkts_per_s_1s >= 1000 (is 50)"), "{e}");
        let pings = vector(&[(F::PktsPerS1s, 100.0), (F::IcmpShare10s, 1.0)]);
        assert!(check("icmp_flood", &pings, &cfg()).is_err());
    }

    #[test]
    fn real_floods_pass_and_name_their_facts() {
        let flood = vector(&[
            (F::PktsPerS1s, 2000.0),
            (F::UdpShare10s, 1.0),
            (F::NewFlowsPerS1s, 2000.0),
        ]);
        let facts = check("udp_flood", &flood, &cfg()).unwrap();
        let text: Vec<String> = facts.iter().map(Fact::describe).collect();
        assert_eq!(
            text,
            ["udp_share_10s 1 >= 0.7", "pkts_per_s_1s 2000 >= 1000"]
        );

        let syn = vector(&[
            (F::SynPerS1s, 2000.0),
            (F::SynRatio10s, 1.0),
            (F::HalfOpenRatio, 1.0),
            (F::HalfOpen, 4000.0),
        ]);
        assert!(check("syn_flood", &syn, &cfg()).is_ok());
        let icmp = vector(&[(F::PktsPerS10s, 900.0), (F::IcmpShare10s, 0.95)]);
        assert!(check("icmp_flood", &icmp, &cfg()).is_ok());
    }

    #[test]
    fn syn_flood_needs_half_open_connections() {
        // A browser opening 20 connections at once: SYNs, but each handshake completes.
        let browser = vector(&[
            (F::SynPerS1s, 200.0),
            (F::SynRatio10s, 0.3),
            (F::HalfOpenRatio, 0.0),
        ]);
        assert!(check("syn_flood", &browser, &cfg()).is_err());
        let slow = vector(&[
            (F::SynPerS1s, 10.0),
            (F::SynPerS10s, 10.0),
            (F::SynRatio10s, 1.0),
            (F::HalfOpenRatio, 1.0),
        ]);
        assert!(
            check("syn_flood", &slow, &cfg()).is_err(),
            "10 SYN/s fills no backlog"
        );
        // At an open port the flooder's kernel resets every SYN-ACK: no flow is half-open, every
        // flow is SYN-then-RST.
        let open_port = vector(&[
            (F::SynPerS1s, 1500.0),
            (F::SynRatio10s, 1.0),
            (F::HalfOpenRatio, 0.0),
            (F::SynRst, 1498.0),
            (F::FlowsActive, 1498.0),
        ]);
        assert!(check("syn_flood", &open_port, &cfg()).is_ok());
        let mostly_done = vector(&[
            (F::SynPerS1s, 1500.0),
            (F::SynRatio10s, 1.0),
            (F::SynRst, 100.0),
            (F::FlowsActive, 1498.0),
        ]);
        assert!(check("syn_flood", &mostly_done, &cfg()).is_err());
    }

    #[test]
    fn port_scan_needs_many_targets_and_few_completed_connections() {
        let scan = vector(&[
            (F::DstPorts10s, 200.0),
            (F::PktsPerFlow10s, 1.2),
            (F::HalfOpenRatio, 0.9),
        ]);
        assert!(check("port_scan", &scan, &cfg()).is_ok());
        let sweep = vector(&[(F::DstHosts10s, 30.0), (F::PktsPerFlow10s, 1.0)]);
        assert!(
            check("port_scan", &sweep, &cfg()).is_ok(),
            "a host sweep on one port"
        );
        // A monitoring host that checks 12 services, each with a full exchange.
        let monitor = vector(&[(F::DstPorts10s, 12.0), (F::PktsPerFlow10s, 9.0)]);
        assert!(check("port_scan", &monitor, &cfg()).is_err());
        // Browser-like parallel fetches: 20 connections, one port.
        let browser = vector(&[(F::DstPorts10s, 1.0), (F::PktsPerFlow10s, 1.0)]);
        assert!(check("port_scan", &browser, &cfg()).is_err());
    }

    #[test]
    fn brute_force_needs_failures_or_many_ssh_connections() {
        let log = vector(&[(F::FailedAuth10s, 3.0)]);
        assert!(check("ssh_brute_force", &log, &cfg()).is_ok());
        assert!(has_log_evidence(&log));
        let conns = vector(&[(F::SshNewFlows10s, 25.0)]);
        assert!(check("ssh_brute_force", &conns, &cfg()).is_ok());
        assert!(!has_log_evidence(&conns));
        let session = vector(&[(F::SshNewFlows10s, 1.0), (F::PktsPerS1s, 40.0)]);
        assert!(check("ssh_brute_force", &session, &cfg()).is_err());
    }
}

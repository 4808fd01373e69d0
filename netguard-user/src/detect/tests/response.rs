//! The response's trust rules: forgeable evidence, the never-block set, per-class block thresholds,
//! verdicts rejected by their evidence, and the UDP-sweep rule. No root needed.

use std::time::Duration;

use super::engine::{detector, syn_flood, vector, with_handshakes};
use crate::detect::{ClassPolicy, DetectConfig, F, ThresholdRule};
use crate::trust::{Origin, Protected};

#[test]
fn forgeable_evidence_gets_a_local_short_unescalated_block() {
    let mut cfg = DetectConfig::default();
    cfg.response.scope = crate::detect::BlockScope::Global;
    cfg.response.forgeable_ttl = Duration::from_secs(120);
    let (mut d, _) = with_handshakes(detector(cfg, "s1"), &["203.0.113.50"]);
    // No handshake: every offence gets the same short, local block.
    let mut at = 0;
    for _ in 0..3 {
        let out = d.evaluate(&[syn_flood("203.0.113.9", at)]);
        let b = out[0].block.as_ref().expect("still blocked");
        assert_eq!((b.ttl.as_secs(), b.scope.to_string().as_str()), (120, "s1"));
        assert!(
            out[0].alert.evidence["response"]
                .as_str()
                .unwrap()
                .starts_with("limited")
        );
        assert_eq!(out[0].alert.evidence["handshake"], false);
        at += 121;
    }
    // A source that completed a handshake gets the full response: global, escalating.
    let mut ttls = Vec::new();
    for i in 0..2 {
        let out = d.evaluate(&[syn_flood("203.0.113.50", i * 1300)]);
        let b = out[0].block.as_ref().unwrap();
        assert_eq!(b.scope.to_string(), "global");
        assert_eq!(out[0].alert.evidence["response"], "full");
        ttls.push(b.ttl.as_secs());
    }
    assert_eq!(ttls, [600, 1200]);
    // Failed logins in a log are evidence only a real peer produces.
    let brute = vector(
        "198.51.100.4",
        0,
        &[
            (F::FailedAuth10s, 3.0),
            (F::SshNewFlows10s, 30.0),
            (F::ActiveSecs10s, 5.0),
        ],
    );
    let out = d.evaluate(&[brute]);
    assert_eq!(out[0].alert.class, "ssh_brute_force");
    assert_eq!(out[0].block.as_ref().unwrap().scope.to_string(), "global");
}

#[test]
fn never_block_addresses_raise_one_refused_alert_per_cooldown() {
    let (mut d, trust) = with_handshakes(detector(DetectConfig::default(), "s1"), &[]);
    trust.never_block.set_derived(vec![Protected {
        cidr: "10.9.0.53/32".parse().unwrap(),
        origin: Origin::Resolver,
        detail: "/etc/resolv.conf".into(),
        expires_at: None,
    }]);
    let out = d.evaluate(&[syn_flood("10.9.0.53", 0)]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].alert.action, "refused");
    assert!(out[0].block.is_none());
    assert_eq!(out[0].refused.as_ref().unwrap().origin, Origin::Resolver);
    let why = out[0].alert.evidence["never_block"].as_str().unwrap();
    assert!(why.contains("a resolver in /etc/resolv.conf"), "{why}");
    for s in 1..30 {
        assert!(
            d.evaluate(&[syn_flood("10.9.0.53", s)]).is_empty(),
            "one refused alert per cooldown"
        );
    }
    // Below the block threshold there is nothing to refuse: a plain alert.
    let mut cfg = DetectConfig::default();
    cfg.response.class.insert(
        "syn_flood".into(),
        ClassPolicy {
            min_risk: Some(100),
            min_confidence: None,
        },
    );
    let mut quiet = detector(cfg, "s1");
    quiet.set_trust(trust);
    assert_eq!(
        quiet.evaluate(&[syn_flood("10.9.0.53", 100)])[0]
            .alert
            .action,
        "alerted"
    );
}

#[test]
fn the_block_threshold_is_configured_per_class() {
    let mut cfg = DetectConfig::default();
    cfg.response.class.insert(
        "syn_flood".into(),
        ClassPolicy {
            min_risk: Some(101),
            min_confidence: None,
        },
    );
    assert!(cfg.validate().is_err(), "risk is 0-100");
    cfg.response.class.get_mut("syn_flood").unwrap().min_risk = Some(100);
    cfg.validate().unwrap();
    let mut d = detector(cfg, "s1");
    let out = d.evaluate(&[syn_flood("203.0.113.9", 0)]);
    assert_eq!(
        out[0].alert.action, "alerted",
        "risk {} < 100",
        out[0].alert.risk
    );
    let text = "[response.class.port_scan]\nmin_risk = 80\nmin_confidence = 0.9\n";
    let cfg: DetectConfig = toml::from_str(text).unwrap();
    assert_eq!(cfg.response.block_threshold("port_scan"), (80, 0.9));
    assert_eq!(cfg.response.block_threshold("udp_flood"), (60, 0.8));
    let bad: DetectConfig = toml::from_str("[response.class.ddos]\nmin_risk = 1\n").unwrap();
    assert!(bad.validate().unwrap_err().to_string().contains("ddos"));
}

#[test]
fn a_verdict_contradicted_by_its_evidence_is_rejected_and_reported() {
    // A rule an operator wrote too loosely: "udp_flood" on packet rate alone.
    let mut cfg = DetectConfig::default();
    cfg.rules.thresholds.push(ThresholdRule {
        name: "loose".into(),
        class: "udp_flood".into(),
        min: [("pkts_per_s_1s".to_string(), 1000.0)]
            .into_iter()
            .collect(),
        enabled: true,
    });
    let mut d = detector(cfg, "s1");
    let download = vector(
        "198.51.100.30",
        0,
        &[
            (F::PktsPerS1s, 2000.0),
            (F::TcpShare10s, 1.0),
            (F::ActiveSecs10s, 10.0),
        ],
    );
    assert!(d.evaluate(&[download]).is_empty());
    let r = d.take_rejected();
    assert_eq!(
        (r[0].class.as_str(), r[0].by.as_str()),
        ("udp_flood", "loose")
    );
    assert!(d.take_rejected().is_empty(), "taken once");
}

#[test]
fn a_udp_sweep_is_a_scan_and_a_busy_dns_client_is_not() {
    let mut d = detector(DetectConfig::default(), "s1");
    let sweep = vector(
        "203.0.113.40",
        0,
        &[
            (F::DstPorts10s, 35.0),
            (F::UdpShare10s, 1.0),
            (F::PktsPerFlow10s, 1.0),
            (F::NewFlowsPerS1s, 35.0),
            (F::ActiveSecs10s, 1.0),
        ],
    );
    let out = d.evaluate(&[sweep]);
    assert_eq!(out[0].alert.class, "port_scan");
    assert_eq!(out[0].alert.evidence["rule"], "udp_port_sweep");
    // 200 queries/s, each from a new source port, all to port 53.
    let dns = vector(
        "198.51.100.53",
        0,
        &[
            (F::DstPorts10s, 1.0),
            (F::UdpShare10s, 1.0),
            (F::PktsPerFlow10s, 2.0),
            (F::NewFlowsPerS1s, 200.0),
            (F::PktsPerS1s, 400.0),
            (F::ActiveSecs10s, 10.0),
        ],
    );
    assert!(d.evaluate(&[dns]).is_empty());
}

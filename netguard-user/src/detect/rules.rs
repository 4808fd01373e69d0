//! Threshold rules beside the model: simple, explainable limits from the config file that catch what
//! the tree misses (rates beyond anything in its training data), and name themselves in the alert.
//! Failed logins over minutes (fail2ban's maxretry / findtime) are not a tick rule any more: they
//! are counted the moment each event arrives by the host-event tracker (`crate::events`, config
//! `[events]`), which also migrates the old `[detect.rules.failed_auth]` section.
//!
//! ```toml
//! [[detect.rules.thresholds]]         # fires when every listed feature is >= its minimum
//! name = "syn_rate"
//! class = "syn_flood"
//! min = { syn_per_s_1s = 1000.0, syn_ratio_10s = 0.9 }
//!
//! [[detect.sensors.web-1.thresholds]] # per-sensor override: wins over the global rule of that name
//! name = "syn_rate"
//! class = "syn_flood"
//! min = { syn_per_s_1s = 5000.0 }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DetectError, features::feature_index};

/// Classes a rule may raise: the model's attack classes plus DESIGN.md's `brute_force` (non-SSH login
/// failures reported by agents).
pub const RULE_CLASSES: &[&str] = &[
    "syn_flood",
    "udp_flood",
    "icmp_flood",
    "port_scan",
    "ssh_brute_force",
    "brute_force",
];

/// Fires when every feature in `min` is at least its value.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    pub name: String,
    pub class: String,
    pub min: BTreeMap<String, f32>,
    /// `false` switches off a rule of the same name inherited from the global rules.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// `[detect.rules]`: the global rules. Leaving the section out keeps the built-in defaults below.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RulesConfig {
    pub thresholds: Vec<ThresholdRule>,
}

fn rule(name: &str, class: &str, min: &[(&str, f32)]) -> ThresholdRule {
    ThresholdRule {
        name: name.into(),
        class: class.into(),
        min: min.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        enabled: true,
    }
}

impl Default for RulesConfig {
    /// Backstops well above what a benign single source does; the model handles the subtler cases.
    fn default() -> Self {
        Self {
            thresholds: vec![
                rule(
                    "syn_rate",
                    "syn_flood",
                    &[("syn_per_s_1s", 1000.0), ("syn_ratio_10s", 0.9)],
                ),
                rule(
                    "udp_rate",
                    "udp_flood",
                    &[
                        ("pkts_per_s_1s", 5000.0),
                        ("udp_share_10s", 0.9),
                        ("new_flows_per_s_1s", 1000.0),
                    ],
                ),
                rule(
                    "icmp_rate",
                    "icmp_flood",
                    &[("pkts_per_s_1s", 1000.0), ("icmp_share_10s", 0.9)],
                ),
                rule("port_sweep", "port_scan", &[("dst_ports_10s", 100.0)]),
                // A UDP scan sends one small datagram per port: 30 ports of nearly all-UDP traffic in
                // 10 s is a sweep long before it reaches 100 (DNS, NTP, voice and QUIC clients talk
                // to one or a few ports). The port-scan evidence check still wants few packets per
                // flow.
                rule(
                    "udp_port_sweep",
                    "port_scan",
                    &[("dst_ports_10s", 30.0), ("udp_share_10s", 0.9)],
                ),
                rule(
                    "ssh_conn_rate",
                    "ssh_brute_force",
                    &[("ssh_new_flows_10s", 20.0)],
                ),
            ],
        }
    }
}

impl RulesConfig {
    /// An override that changes nothing (the shape of `[detect.sensors.ID]`).
    pub fn inherit() -> Self {
        Self {
            thresholds: Vec::new(),
        }
    }

    /// The rules in force on one sensor: the global ones, with the override's thresholds replacing
    /// (or adding to) those of the same name.
    pub fn merged(&self, over: Option<&RulesConfig>) -> RulesConfig {
        let mut out = self.clone();
        if let Some(o) = over {
            for t in &o.thresholds {
                match out.thresholds.iter_mut().find(|g| g.name == t.name) {
                    Some(g) => *g = t.clone(),
                    None => out.thresholds.push(t.clone()),
                }
            }
        }
        out
    }

    pub fn validate(&self, field: &str) -> Result<(), DetectError> {
        let bad = |f: String, detail: String| Err(DetectError::Config { field: f, detail });
        for (i, t) in self.thresholds.iter().enumerate() {
            let at = format!("{field}.thresholds[{i}] ({})", t.name);
            if !RULE_CLASSES.contains(&t.class.as_str()) {
                return bad(
                    format!("{at}.class"),
                    format!(
                        "unknown class `{}` (one of {})",
                        t.class,
                        RULE_CLASSES.join(", ")
                    ),
                );
            }
            if t.min.is_empty() && t.enabled {
                return bad(
                    format!("{at}.min"),
                    "a rule needs at least one `feature = minimum`".into(),
                );
            }
            if let Some(f) = t.min.keys().find(|f| feature_index(f).is_none()) {
                return bad(
                    format!("{at}.min"),
                    format!("unknown feature `{f}` (see FEATURES in detect/features.rs)"),
                );
            }
        }
        Ok(())
    }
}

/// A threshold rule with its features resolved to indices.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub name: String,
    pub class: String,
    pub conds: Vec<(usize, f32)>,
}

impl Compiled {
    pub fn fires(&self, values: &[f32]) -> bool {
        self.conds
            .iter()
            .all(|&(i, min)| values.get(i).is_some_and(|v| *v >= min))
    }
}

/// Rules ready to evaluate; features that do not exist are dropped (validation reports them).
pub(crate) fn compile(rules: &RulesConfig) -> Vec<Compiled> {
    rules
        .thresholds
        .iter()
        .filter(|t| t.enabled && !t.min.is_empty())
        .map(|t| Compiled {
            name: t.name.clone(),
            class: t.class.clone(),
            conds: t
                .min
                .iter()
                .filter_map(|(f, v)| feature_index(f).map(|i| (i, *v)))
                .collect(),
        })
        .collect()
}

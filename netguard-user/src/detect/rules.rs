//! Threshold rules beside the model: simple, explainable limits from the config file that catch what
//! the tree misses (rates beyond anything in its training data, or failed logins over minutes rather
//! than seconds), and name themselves in the alert.
//!
//! ```toml
//! [detect.rules.failed_auth]          # fail2ban's maxretry / findtime
//! max_retry = 5
//! find_time = "10m"
//!
//! [[detect.rules.thresholds]]         # fires when every listed feature is >= its minimum
//! name = "syn_rate"
//! class = "syn_flood"
//! min = { syn_per_s_1s = 1000.0, syn_ratio_10s = 0.9 }
//!
//! [detect.sensors.web-1.failed_auth]  # per-sensor override: wins over the global rule of that name
//! max_retry = 3
//! ```

use std::{collections::BTreeMap, collections::VecDeque, time::Duration};

use chrono::{DateTime, Utc};
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

/// `N` failed logins from one source within `find_time` raise `class`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FailedAuthRule {
    /// 0 turns the rule off.
    pub max_retry: u32,
    #[serde(with = "super::duration_str")]
    pub find_time: Duration,
    pub class: String,
}

impl Default for FailedAuthRule {
    fn default() -> Self {
        Self {
            max_retry: 5,
            find_time: Duration::from_secs(600),
            class: "ssh_brute_force".into(),
        }
    }
}

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
    /// `None` (only possible per sensor) inherits the global rule.
    pub failed_auth: Option<FailedAuthRule>,
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
            failed_auth: Some(FailedAuthRule::default()),
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
            failed_auth: None,
            thresholds: Vec::new(),
        }
    }

    /// The rules in force on one sensor: the global ones, with the override's failed-auth rule and
    /// its thresholds replacing (or adding to) those of the same name.
    pub fn merged(&self, over: Option<&RulesConfig>) -> RulesConfig {
        let mut out = self.clone();
        if let Some(o) = over {
            if o.failed_auth.is_some() {
                out.failed_auth = o.failed_auth.clone();
            }
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
        if let Some(fa) = &self.failed_auth
            && !RULE_CLASSES.contains(&fa.class.as_str())
        {
            return bad(
                format!("{field}.failed_auth.class"),
                format!(
                    "unknown class `{}` (one of {})",
                    fa.class,
                    RULE_CLASSES.join(", ")
                ),
            );
        }
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
pub(crate) fn compile(rules: &RulesConfig) -> (Option<FailedAuthRule>, Vec<Compiled>) {
    let fa = rules.failed_auth.clone().filter(|r| r.max_retry > 0);
    let th = rules
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
        .collect();
    (fa, th)
}

/// Failed logins of one source within the find time. At most `max_retry` entries are kept: once the
/// newest ones reach the limit, older ones can never change the outcome of a later check.
#[derive(Clone, Debug, Default)]
pub(crate) struct AuthWindow {
    events: VecDeque<(DateTime<Utc>, u32)>,
}

impl AuthWindow {
    /// Adds `count` failures at `ts` and returns the failures within `find_time` before `ts`.
    pub fn push(&mut self, ts: DateTime<Utc>, count: u32, rule: &FailedAuthRule) -> u32 {
        if count > 0 {
            self.events.push_back((ts, count));
        }
        let horizon = chrono::Duration::from_std(rule.find_time)
            .ok()
            .and_then(|d| ts.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        while self.events.front().is_some_and(|(t, _)| *t <= horizon) {
            self.events.pop_front();
        }
        while self.events.len() > rule.max_retry.max(1) as usize {
            self.events.pop_front();
        }
        self.events
            .iter()
            .map(|(_, c)| *c)
            .fold(0u32, u32::saturating_add)
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

//! `[detect]` configuration: detection thresholds, per-sensor rule overrides and the response policy.
//! Every key has a default, so an empty section (or none) gives a working detector.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    DetectError, duration_str,
    rules::{RULE_CLASSES, RulesConfig},
};

/// `[detect]` in the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub enabled: bool,
    /// Model file; absent: the shipped default model (the daemon decides; `--model` overrides).
    pub model: Option<PathBuf>,
    /// Minimum model confidence for an alert (rules always alert).
    pub min_confidence: f32,
    /// Model verdicts on a source that sent fewer packets than this in the long window are ignored: one
    /// unanswered SYN is not evidence of anything, and a spoofed flood is judged on its aggregate
    /// (`0.0.0.0`) instead of one packet per forged address. Rules are not affected.
    pub model_min_packets: u32,
    /// Model verdicts on the aggregate of untracked and small sources (`0.0.0.0`) need at least this
    /// many distinct sources in it: a spoofed flood folds thousands of forged addresses into it (the
    /// lab's spoofed floods: 1,100-1,600 per second), while neighbour discovery and a few stray
    /// one-packet senders are not a flood.
    pub aggregate_min_sources: u32,
    /// Close the open window early (at least 200 ms after the last one) when, since it opened, packets
    /// passed at this rate per second, or new flows were created at a fifth of it (a scan), and at three
    /// times the previous window's rate: a flood or scan that starts just before a window closes is then
    /// judged within a few hundred milliseconds instead of at the next tick. 0 turns it off.
    pub surge_pps: u32,
    /// One alert per source and class per cooldown; repeats are counted into the next one.
    #[serde(with = "duration_str")]
    pub alert_cooldown: Duration,
    /// Sources whose detection state (cooldowns, streaks, failed logins, offences) is remembered.
    pub max_tracked: usize,
    pub features: ExtractorConfig,
    /// Defining evidence each class's verdicts must show before they are acted on.
    pub evidence: super::evidence::EvidenceConfig,
    pub rules: RulesConfig,
    /// Per-sensor overrides of `rules`, by sensor id.
    pub sensors: BTreeMap<String, RulesConfig>,
    pub response: ResponseConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: None,
            min_confidence: 0.6,
            model_min_packets: 5,
            aggregate_min_sources: 64,
            surge_pps: 1000,
            alert_cooldown: Duration::from_secs(60),
            max_tracked: 65_536,
            features: ExtractorConfig::default(),
            evidence: Default::default(),
            rules: RulesConfig::default(),
            sensors: BTreeMap::new(),
            response: ResponseConfig::default(),
        }
    }
}

/// Where an automatic block applies.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BlockScope {
    /// Only on the sensor that detected the source.
    #[default]
    Sensor,
    /// On every sensor sharing the store.
    Global,
}

/// `[detect.response]`: automatic blocking.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseConfig {
    /// Alert only, never block (also `netguard run --dry-run`).
    pub dry_run: bool,
    /// Block duration per class; a class without an entry is only alerted.
    #[serde(with = "duration_map")]
    pub ttl: BTreeMap<String, Duration>,
    /// Each repeat offence multiplies the TTL (fail2ban's bantime.increment)...
    pub escalation_factor: f64,
    /// ...up to this.
    #[serde(with = "duration_str")]
    pub max_ttl: Duration,
    /// Offences older than this are forgotten (fail2ban's dbpurgeage).
    #[serde(with = "duration_str")]
    pub offense_memory: Duration,
    /// Minimum confidence for a block (rules have confidence 1).
    pub min_confidence: f32,
    /// Minimum risk for a block on a model verdict alone (a rule that fires blocks regardless). At 60,
    /// a flood at a few thousand packets/s or a full port sweep blocks from its first window (~70-80),
    /// a slower attack once it persists, and a verdict without its class's intensity never (<= 50).
    pub min_risk: u8,
    /// Where blocks apply. Blocks on evidence a forged source could produce stay on this sensor
    /// whatever this says (see `forgeable_ttl`).
    pub scope: BlockScope,
    /// Per-class overrides of `min_risk` and `min_confidence` (`[detect.response.class.port_scan]`):
    /// below them a verdict is alerted, at or above it is blocked.
    pub class: BTreeMap<String, ClassPolicy>,
    /// A source that never completed a TCP handshake with this host and has no failed login in a
    /// log may be forged: its block lasts at most this long, stays on this sensor and is never
    /// escalated, so that forging a victim's address buys an attacker little.
    #[serde(with = "duration_str")]
    pub forgeable_ttl: Duration,
}

/// `[detect.response.class.NAME]`: where a class's verdicts turn from alerts into blocks.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassPolicy {
    pub min_risk: Option<u8>,
    pub min_confidence: Option<f32>,
}

impl ResponseConfig {
    /// (min_risk, min_confidence) for blocking on a verdict of `class`.
    pub fn block_threshold(&self, class: &str) -> (u8, f32) {
        let p = self.class.get(class);
        (
            p.and_then(|p| p.min_risk).unwrap_or(self.min_risk),
            p.and_then(|p| p.min_confidence)
                .unwrap_or(self.min_confidence),
        )
    }
}

impl Default for ResponseConfig {
    fn default() -> Self {
        let m = |s: u64| Duration::from_secs(60 * s);
        Self {
            dry_run: false,
            ttl: [
                ("syn_flood", m(10)),
                ("udp_flood", m(10)),
                ("icmp_flood", m(10)),
                ("port_scan", m(60)),
                ("ssh_brute_force", m(60)),
                ("brute_force", m(60)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            escalation_factor: 2.0,
            max_ttl: Duration::from_secs(7 * 86_400),
            offense_memory: Duration::from_secs(86_400),
            min_confidence: 0.8,
            min_risk: 60,
            scope: BlockScope::Sensor,
            class: BTreeMap::new(),
            forgeable_ttl: Duration::from_secs(120),
        }
    }
}

/// Maps of humantime durations (`ttl = { port_scan = "1h" }`).
mod duration_map {
    use std::{collections::BTreeMap, time::Duration};

    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeMap};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, &humantime::format_duration(*v).to_string())?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| match humantime::parse_duration(v.trim()) {
                Ok(d) => Ok((k, d)),
                Err(e) => Err(serde::de::Error::custom(format!(
                    "ttl.{k} = `{v}`: {e} (use e.g. \"10m\", \"4h\")"
                ))),
            })
            .collect()
    }
}

impl DetectConfig {
    /// Checks names and ranges; the daemon calls it when loading the config so mistakes are reported
    /// at startup (the detector itself skips what it cannot use).
    pub fn validate(&self) -> Result<(), DetectError> {
        let bad = |field: &str, detail: String| {
            Err(DetectError::Config {
                field: field.into(),
                detail,
            })
        };
        self.rules.validate("detect.rules")?;
        for (id, r) in &self.sensors {
            r.validate(&format!("detect.sensors.{id}"))?;
        }
        if let Some(c) = self
            .response
            .ttl
            .keys()
            .find(|c| !RULE_CLASSES.contains(&c.as_str()))
        {
            return bad(
                "detect.response.ttl",
                format!("unknown class `{c}` (one of {})", RULE_CLASSES.join(", ")),
            );
        }
        if !(self.response.escalation_factor >= 1.0 && self.response.escalation_factor.is_finite())
        {
            return bad(
                "detect.response.escalation_factor",
                "must be a number >= 1".into(),
            );
        }
        if let Some(c) = self
            .response
            .class
            .keys()
            .find(|c| !RULE_CLASSES.contains(&c.as_str()))
        {
            return bad(
                "detect.response.class",
                format!("unknown class `{c}` (one of {})", RULE_CLASSES.join(", ")),
            );
        }
        let per_class: Vec<(String, f32)> = self
            .response
            .class
            .iter()
            .filter_map(|(c, p)| {
                p.min_confidence
                    .map(|v| (format!("detect.response.class.{c}.min_confidence"), v))
            })
            .collect();
        for (c, p) in &self.response.class {
            if p.min_risk.is_some_and(|r| r > 100) {
                return bad(
                    &format!("detect.response.class.{c}.min_risk"),
                    "must be between 0 and 100".into(),
                );
            }
        }
        if self.response.min_risk > 100 {
            return bad(
                "detect.response.min_risk",
                "must be between 0 and 100".into(),
            );
        }
        if self.response.forgeable_ttl.is_zero() {
            return bad(
                "detect.response.forgeable_ttl",
                "must be at least 1s (it bounds blocks on forgeable evidence)".into(),
            );
        }
        let fixed = [
            ("detect.min_confidence".to_owned(), self.min_confidence),
            (
                "detect.response.min_confidence".to_owned(),
                self.response.min_confidence,
            ),
        ];
        for (f, v) in fixed.into_iter().chain(per_class) {
            let f = f.as_str();
            if !(0.0..=1.0).contains(&v) {
                return bad(f, format!("{v} is not between 0 and 1"));
            }
        }
        if self.features.max_sources == 0 || self.max_tracked == 0 {
            return bad("detect.features.max_sources", "must be at least 1".into());
        }
        Ok(())
    }
}

/// `[detect.features]` in the config file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractorConfig {
    /// Sources tracked at most; the rest are evicted (LRU) into the overflow aggregate.
    pub max_sources: usize,
    /// Long window. The `_10s` features assume 10 s: change it only together with a retrained model.
    #[serde(with = "super::duration_str")]
    pub long_window: Duration,
    /// Nominal tick (the daemon's period), used when the flow snapshots carry no timing.
    #[serde(with = "super::duration_str")]
    pub tick: Duration,
    /// Sources with fewer packets than this in the long window (and no failed login) get no vector of
    /// their own: they are judged together in the aggregate `OVERFLOW_SRC` vector. One packet from a
    /// forged address says nothing; a hundred thousand of them together are a flood.
    pub min_packets: u32,
    /// Flows idle this long are forgotten (their next packets are re-baselined, costing one tick).
    #[serde(with = "super::duration_str")]
    pub flow_forget_after: Duration,
    /// TCP ports sshd listens on: new connections to them make the `ssh_new_flows_10s` feature.
    pub ssh_ports: Vec<u16>,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        Self {
            max_sources: 65_536,
            long_window: Duration::from_secs(10),
            tick: Duration::from_secs(1),
            min_packets: 5,
            flow_forget_after: Duration::from_secs(60),
            ssh_ports: vec![22],
        }
    }
}

//! The detector: model verdicts and rule hits on closed windows become alerts (deduplicated per source
//! and class within a cooldown) and block decisions (TTL per class, escalated for repeat offenders).
//! It is pure: it returns decisions and the daemon carries them out through the control plane.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_store::{Alert, Scope};

use super::{
    config::{BlockScope, DetectConfig},
    evidence::{self, Contradiction, Fact},
    features::{F, FEATURES, FeatureVector},
    mitre,
    model::Model,
    rules::{self, Compiled},
    windows::OVERFLOW_SRC,
};
use crate::control::EntryRequest;
use crate::trust::{Protected, Trust};

/// Block one source: what the daemon passes to the control plane (source "auto").
#[derive(Clone, Debug, PartialEq)]
pub struct BlockDecision {
    /// The source as a /32 or /128.
    pub cidr: IpNet,
    pub ttl: Duration,
    pub reason: String,
    pub scope: Scope,
}

impl BlockDecision {
    /// The blocklist request, as REST would send it.
    pub fn to_request(&self) -> EntryRequest {
        EntryRequest {
            cidr: self.cidr.to_string(),
            ttl: Some(humantime::format_duration(self.ttl).to_string()),
            reason: Some(self.reason.clone()),
            scope: Some(self.scope.to_string()),
            force: false,
        }
    }
}

/// One outcome of [`Detector::evaluate`]: an alert to store and push, and maybe a block to apply.
/// `refused` is set when the verdict warranted a block of an address that is never blocked; the
/// alert's action is then "refused" and `block` is None.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub alert: Alert,
    pub block: Option<BlockDecision>,
    pub refused: Option<Protected>,
}

/// A verdict that its class's defining evidence contradicts: never acted on, only counted.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub src: IpAddr,
    pub class: String,
    /// "model" or the rule's name.
    pub by: String,
    pub why: Contradiction,
}

/// When the last alert of a class went out for a source, and what was suppressed since.
#[derive(Clone, Debug)]
struct Mark {
    class: String,
    at: DateTime<Utc>,
    suppressed: u32,
    /// The block this alert called for was refused (never-block): one refusal per cooldown.
    refused: bool,
}

#[derive(Clone, Debug, Default)]
struct SrcState {
    last_seen: Option<DateTime<Utc>>,
    /// Class index (into CLASSES or RULE_CLASSES by name) and consecutive windows it was seen.
    streak: Option<(String, u32)>,
    marks: Vec<Mark>,
    offenses: u32,
    last_offense: Option<DateTime<Utc>>,
    blocked_until: Option<DateTime<Utc>>,
    /// Whether the last proposed block counted as an offence (blocks on forgeable evidence do not).
    offence_counted: bool,
}

/// An alert candidate for one class in one window.
struct Candidate {
    /// The defining evidence that held (filled by the evidence check).
    facts: Vec<Fact>,
    rules: Vec<String>,
    confidence: f32,
    features: Vec<usize>,
    extra: serde_json::Map<String, serde_json::Value>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

pub struct Detector {
    cfg: DetectConfig,
    sensor_id: String,
    model: Option<Model>,
    thresholds: Vec<Compiled>,
    allow: Vec<IpNet>,
    state: HashMap<IpAddr, SrcState>,
    /// The never-block set and handshake record; without them (unit tests of other parts) nothing
    /// is protected and every source counts as possibly forged.
    trust: Option<Trust>,
    rejected: Vec<Rejected>,
}

impl Detector {
    pub fn new(cfg: DetectConfig, sensor_id: &str, model: Option<Model>) -> Self {
        let effective = cfg.rules.merged(cfg.sensors.get(sensor_id));
        let thresholds = rules::compile(&effective);
        if model.is_some() && cfg.features.long_window != Duration::from_secs(10) {
            log::warn!(
                "detect.features.long_window is {} but the model's `_10s` features assume 10s: retrain for this window",
                humantime::format_duration(cfg.features.long_window)
            );
        }
        Self {
            cfg,
            sensor_id: sensor_id.into(),
            model,
            thresholds,
            allow: Vec::new(),
            state: HashMap::new(),
            trust: None,
            rejected: Vec::new(),
        }
    }

    /// Checks proposed blocks against the never-block set and the handshake record.
    pub fn set_trust(&mut self, trust: Trust) {
        self.trust = Some(trust);
    }

    /// Verdicts rejected by the evidence checks since the last call.
    pub fn take_rejected(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejected)
    }

    pub fn model(&self) -> Option<&Model> {
        self.model.as_ref()
    }

    /// Sources with detection state (bounded by `max_tracked`).
    pub fn tracked_sources(&self) -> usize {
        self.state.len()
    }

    /// CIDRs never to block (the control plane refuses them anyway; knowing them here avoids proposing
    /// blocks that would fail and keeps the alert's action truthful).
    pub fn set_allowlist(&mut self, nets: Vec<IpNet>) {
        self.allow = nets;
    }

    /// The control plane refused a proposed block: the source is not blocked after all.
    pub fn forget_block(&mut self, src: IpAddr) {
        if let Some(s) = self.state.get_mut(&src) {
            s.blocked_until = None;
            if std::mem::take(&mut s.offence_counted) {
                s.offenses = s.offenses.saturating_sub(1);
            }
        }
    }

    /// Evaluates the vectors of closed windows (any order); returns the alerts and blocks they call for.
    pub fn evaluate(&mut self, vectors: &[FeatureVector]) -> Vec<Decision> {
        let mut out = Vec::new();
        for v in vectors {
            if v.values.len() != FEATURES.len() {
                continue;
            }
            self.make_room(v.ts);
            let mut cands = self.candidates(v);
            // Every verdict, from the model or a rule, must show its class's defining evidence.
            cands.retain(
                |class, cand| match evidence::check(class, v, &self.cfg.evidence) {
                    Ok(facts) => {
                        cand.facts = facts;
                        true
                    }
                    Err(why) => {
                        self.rejected.push(Rejected {
                            src: v.src,
                            class: class.clone(),
                            by: cand.rules.first().map_or("model", String::as_str).into(),
                            why,
                        });
                        false
                    }
                },
            );
            let st = self.state.entry(v.src).or_default();
            st.last_seen = Some(v.ts);
            // Persistence: consecutive windows in which the same class was raised.
            let top = cands
                .iter()
                .max_by(|a, b| a.1.confidence.total_cmp(&b.1.confidence))
                .map(|(c, _)| c.clone());
            st.streak = match (top, st.streak.take()) {
                (Some(c), Some((p, n))) if c == p => Some((c, n + 1)),
                (Some(c), _) => Some((c, 1)),
                (None, _) => None,
            };
            for (class, cand) in cands {
                if let Some(d) = self.decide(v, &class, cand) {
                    out.push(d);
                }
            }
        }
        out
    }

    /// Model verdict and rule hits of one vector, by class.
    fn candidates(&mut self, v: &FeatureVector) -> BTreeMap<String, Candidate> {
        let mut cands: BTreeMap<String, Candidate> = BTreeMap::new();
        let mut model_note = None;
        if let Some(m) = &self.model {
            let (p, path) = m.explain(&v.values);
            model_note = Some((p.class, p.confidence));
            let packets =
                f64::from(v.get(F::PktsPerS10s)) * self.cfg.features.long_window.as_secs_f64();
            // Only sources that sent in the closing tick are judged. A source that went quiet still
            // has a full 10 s window and an empty 1 s one, a shape the lab never labels (it drops
            // the windows that drain after the tools end): judging it would call the end of every
            // bulk transfer an attack. An attack that goes on is judged on its next active tick.
            let active = v.get(F::PktsPerS1s) > 0.0;
            let aggregate_ok =
                v.src != OVERFLOW_SRC || v.get(F::Sources) >= self.cfg.aggregate_min_sources as f32;
            if p.index != 0
                && active
                && aggregate_ok
                && p.confidence >= self.cfg.min_confidence
                && packets + 0.5 >= f64::from(self.cfg.model_min_packets)
            {
                cands.insert(
                    p.class.into(),
                    Candidate {
                        facts: Vec::new(),
                        rules: Vec::new(),
                        confidence: p.confidence,
                        features: path,
                        extra: Default::default(),
                    },
                );
            }
        }
        let mut hit = |class: &str,
                       name: &str,
                       features: Vec<usize>,
                       extra: Option<(&str, serde_json::Value)>| {
            let c = cands.entry(class.into()).or_insert_with(|| Candidate {
                facts: Vec::new(),
                rules: Vec::new(),
                confidence: 1.0,
                features: Vec::new(),
                extra: Default::default(),
            });
            c.rules.push(name.into());
            c.confidence = 1.0;
            c.features.extend(features);
            if let Some((k, val)) = extra {
                c.extra.insert(k.into(), val);
            }
        };
        for t in &self.thresholds {
            if t.fires(&v.values) {
                hit(
                    &t.class,
                    &t.name,
                    t.conds.iter().map(|c| c.0).collect(),
                    None,
                );
            }
        }
        if let Some((class, conf)) = model_note {
            for c in cands.values_mut() {
                c.extra.insert("model_class".into(), class.into());
                c.extra
                    .insert("model_confidence".into(), round3(f64::from(conf)).into());
            }
        }
        cands
    }

    fn decide(&mut self, v: &FeatureVector, class: &str, cand: Candidate) -> Option<Decision> {
        let resp = &self.cfg.response;
        let blockable = v.src != OVERFLOW_SRC
            && !v.src.is_unspecified()
            && !v.src.is_loopback()
            && !self.allow.iter().any(|n| n.contains(&v.src));
        let st = self.state.get(&v.src)?;
        let streak = st
            .streak
            .as_ref()
            .filter(|(c, _)| c == class)
            .map_or(1, |(_, n)| *n);
        let risk = risk(class, v, cand.confidence, streak, &cand.extra);
        let blocked_now = st.blocked_until.is_some_and(|t| t > v.ts);
        let base_ttl = resp.ttl.get(class).copied().filter(|t| !t.is_zero());
        // Graduated: below the class's risk and confidence the verdict is only alerted, for rules
        // and the model alike.
        let (min_risk, min_confidence) = resp.block_threshold(class);
        let warrants_block =
            base_ttl.is_some() && cand.confidence >= min_confidence && risk >= min_risk;
        let wants_block = !resp.dry_run && blockable && !blocked_now && warrants_block;
        // An address the host depends on is never blocked: the alert says so, once per cooldown.
        let protected = if wants_block {
            self.trust
                .as_ref()
                .and_then(|t| t.never_block.conflict(&IpNet::from(v.src)))
        } else {
            None
        };
        let wants_block = wants_block && protected.is_none();
        // Evidence a forged source address could produce gets a limited response.
        let handshake = self
            .trust
            .as_ref()
            .is_some_and(|t| t.handshakes.proven(v.src));
        let proven = handshake || evidence::has_log_evidence(v);
        let st = self.state.get_mut(&v.src)?;
        let cooldown =
            chrono::Duration::from_std(self.cfg.alert_cooldown).unwrap_or(chrono::Duration::MAX);
        let mark = st.marks.iter_mut().find(|m| m.class == class);
        let suppressed = match mark {
            // Within the cooldown: counted, not sent, unless this window now warrants a block (the
            // source is not blocked now: never before, or its block expired) or its first refusal.
            Some(m)
                if v.ts - m.at < cooldown
                    && !(wants_block || (protected.is_some() && !m.refused)) =>
            {
                m.suppressed = m.suppressed.saturating_add(1);
                return None;
            }
            Some(m) => std::mem::take(&mut m.suppressed),
            None => 0,
        };
        let block = if wants_block {
            let memory =
                chrono::Duration::from_std(resp.offense_memory).unwrap_or(chrono::Duration::MAX);
            if st.last_offense.is_some_and(|t| v.ts - t > memory) {
                st.offenses = 0;
            }
            let base = base_ttl.unwrap_or_default();
            st.offence_counted = proven;
            let ttl = if proven {
                st.offenses += 1;
                st.last_offense = Some(v.ts);
                escalated(base, resp.escalation_factor, st.offenses, resp.max_ttl)
            } else {
                // Not escalated, and not counted as an offence: the address may be a victim's.
                base.min(resp.forgeable_ttl)
            };
            st.blocked_until = chrono::Duration::from_std(ttl)
                .ok()
                .and_then(|d| v.ts.checked_add_signed(d));
            let why = cand.rules.first().map_or("model", String::as_str);
            Some(BlockDecision {
                cidr: IpNet::from(v.src),
                ttl,
                reason: if proven {
                    format!(
                        "auto: {class} ({why}, risk {risk}, offence {})",
                        st.offenses
                    )
                } else {
                    format!("auto: {class} ({why}, risk {risk}, limited: no handshake or log line)")
                },
                scope: match resp.scope {
                    BlockScope::Global if proven => Scope::Global,
                    _ => Scope::Sensor(self.sensor_id.clone()),
                },
            })
        } else {
            None
        };
        let new_mark = Mark {
            class: class.into(),
            at: v.ts,
            suppressed: 0,
            // A refusal is final for the cooldown: one refused alert, not one per window.
            refused: protected.is_some(),
        };
        match st.marks.iter_mut().find(|m| m.class == class) {
            Some(m) => *m = new_mark,
            None => st.marks.push(new_mark),
        }
        let mut evidence = serde_json::Map::new();
        evidence.insert(
            "rule".into(),
            cand.rules.first().map_or("model", String::as_str).into(),
        );
        if cand.rules.len() > 1 {
            evidence.insert("rules".into(), cand.rules.clone().into());
        }
        evidence.insert(
            "justified_by".into(),
            cand.facts
                .iter()
                .map(Fact::describe)
                .collect::<Vec<_>>()
                .into(),
        );
        if warrants_block && !blockable && v.src != OVERFLOW_SRC {
            evidence.insert("allowlisted".into(), true.into());
        }
        if let Some(p) = &protected {
            evidence.insert("never_block".into(), p.reason().into());
            evidence.insert(
                "never_block_origin".into(),
                serde_json::to_value(p.origin).unwrap_or_default(),
            );
        }
        if block.is_some() || protected.is_some() {
            evidence.insert("handshake".into(), handshake.into());
            evidence.insert(
                "response".into(),
                if proven {
                    "full"
                } else {
                    "limited: no completed handshake and no log line, so the source may be forged"
                }
                .into(),
            );
        }
        let mut shown: Vec<usize> = core_features(class).iter().map(|f| *f as usize).collect();
        for f in cand.features {
            if !shown.contains(&f) && shown.len() < 16 {
                shown.push(f);
            }
        }
        for f in shown {
            evidence.insert(FEATURES[f].into(), round3(f64::from(v.values[f])).into());
        }
        if v.src == OVERFLOW_SRC {
            // Not one sender: the sources too small to judge alone plus those beyond the tracking cap.
            evidence.insert("aggregate".into(), true.into());
            evidence.insert(
                F::Sources.name().into(),
                round3(f64::from(v.get(F::Sources))).into(),
            );
        }
        if let Some(b) = &block {
            evidence.insert(
                "ttl".into(),
                humantime::format_duration(b.ttl).to_string().into(),
            );
        }
        evidence.extend(cand.extra);
        let alert = Alert {
            id: format!(
                "{}-{}-d{}",
                self.sensor_id,
                v.ts.timestamp_millis(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            ts: v.ts,
            sensor_id: self.sensor_id.clone(),
            class: class.into(),
            src_ip: v.src,
            dst_ip: v.dst_ip,
            dst_port: v.dst_port,
            risk,
            confidence: cand.confidence,
            mitre: mitre(class).into(),
            action: if block.is_some() {
                "blocked"
            } else if protected.is_some() {
                "refused"
            } else {
                "alerted"
            }
            .into(),
            evidence,
            count: 1 + suppressed,
        };
        Some(Decision {
            alert,
            block,
            refused: protected,
        })
    }

    /// Keeps per-source state within `max_tracked`: first drop sources with nothing left to remember,
    /// then the least recently seen.
    fn make_room(&mut self, now: DateTime<Utc>) {
        if self.state.len() < self.cfg.max_tracked {
            return;
        }
        let keep = chrono::Duration::from_std(
            self.cfg
                .alert_cooldown
                .max(self.cfg.response.offense_memory),
        )
        .unwrap_or(chrono::Duration::MAX);
        self.state.retain(|_, s| {
            s.last_seen.is_some_and(|t| now - t < keep) && (s.offenses > 0 || !s.marks.is_empty())
        });
        if self.state.len() >= self.cfg.max_tracked {
            let mut by_age: Vec<(Option<DateTime<Utc>>, IpAddr)> = self
                .state
                .iter()
                .map(|(ip, s)| (s.last_seen, *ip))
                .collect();
            by_age.sort_unstable();
            for (_, ip) in by_age.into_iter().take(self.cfg.max_tracked / 8 + 1) {
                self.state.remove(&ip);
            }
        }
    }
}

/// `base · factor^(offences-1)`, capped.
fn escalated(base: Duration, factor: f64, offenses: u32, max: Duration) -> Duration {
    let exp = i32::try_from(offenses.saturating_sub(1)).unwrap_or(i32::MAX);
    let secs = base.as_secs_f64() * factor.powi(exp);
    let ttl = if secs.is_finite() && secs < max.as_secs_f64() {
        Duration::from_secs(secs.round() as u64)
    } else {
        max
    };
    ttl.max(Duration::from_secs(1))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Features every alert of a class shows, whatever fired.
fn core_features(class: &str) -> &'static [F] {
    match class {
        "syn_flood" => &[F::SynPerS1s, F::SynRatio10s, F::HalfOpen, F::NewFlowsPerS1s],
        "udp_flood" => &[
            F::PktsPerS1s,
            F::BytesPerS1s,
            F::UdpShare10s,
            F::NewFlowsPerS1s,
        ],
        "icmp_flood" => &[F::PktsPerS1s, F::BytesPerS1s, F::IcmpShare10s],
        "port_scan" => &[F::DstPorts10s, F::DstHosts10s, F::HalfOpen, F::SynRst],
        "ssh_brute_force" | "brute_force" => &[F::FailedAuth10s, F::SshNewFlows10s],
        _ => &[F::PktsPerS1s],
    }
}

/// Risk 0-100: confidence × (25% + 50% intensity + 25% persistence). Intensity is the class's own
/// measure, log-scaled against a reference rate (SYN/s for a SYN flood, packets/s for the other floods,
/// distinct ports for a scan, failed logins for brute force); persistence counts consecutive windows
/// with the verdict, or seconds active in the long window. It is a product so that a confident verdict
/// without the intensity of its class (say "syn_flood" on a source sending no SYNs) stays at or below 50,
/// under the default block threshold, however long it lasts.
fn risk(
    class: &str,
    v: &FeatureVector,
    confidence: f32,
    streak: u32,
    _extra: &serde_json::Map<String, serde_json::Value>,
) -> u8 {
    let g = |f: F| f64::from(v.get(f));
    let (x, reference) = match class {
        "syn_flood" => (g(F::SynPerS1s).max(g(F::SynPerS10s)), 5_000.0),
        "udp_flood" | "icmp_flood" => (g(F::PktsPerS1s).max(g(F::PktsPerS10s)), 10_000.0),
        "port_scan" => (g(F::DstPorts10s), 500.0),
        "ssh_brute_force" | "brute_force" => (g(F::FailedAuth10s).max(g(F::SshNewFlows10s)), 50.0),
        _ => (g(F::PktsPerS1s), 10_000.0),
    };
    let rate = ((1.0 + x.max(0.0)).ln() / (1.0f64 + reference).ln()).min(1.0);
    let persistence = (f64::from(streak) / 5.0)
        .max(g(F::ActiveSecs10s) / 10.0)
        .min(1.0);
    let r =
        100.0 * f64::from(confidence.clamp(0.0, 1.0)) * (0.25 + 0.5 * rate + 0.25 * persistence);
    r.round().clamp(0.0, 100.0) as u8
}

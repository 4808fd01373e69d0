//! The detection loop: once a second, read the kernel's flow table, close each source's window, record
//! the vectors (for the lab), evaluate them, and carry out the decisions through the control plane.
//!
//! It lives in the library, not in `run`, so that tests can drive ticks directly against a real
//! datapath and store.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use netguard_store::{EntrySource, ListKind};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};

use crate::{
    control::{Control, ControlError},
    datapath::Datapath,
    detect::{
        DetectConfig, Detector, Extractor, ExtractorStats, FeatureVector, Model,
        mono_coarse_now_ns, record_row, write_record_header,
    },
    metrics::Metrics,
};

/// Where the shipped model lives in the source tree (training and benchmarks write and read it there).
pub const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.json");

/// The shipped model, embedded in the binary: an installed `netguard` runs the same detector
/// wherever it lives, without the source tree.
pub const EMBEDDED_MODEL: &str = include_str!("../models/default.json");

/// What one tick saw and did, for the summary line and metrics.
#[derive(Clone, Debug, Default)]
pub struct TickReport {
    pub flows: usize,
    pub vectors: usize,
    pub alerts: usize,
    pub blocks: usize,
    pub extractor: ExtractorStats,
}

/// The detection loop's own metrics (DESIGN.md lists the names): per-source state against its cap,
/// what the cap cost, how long a tick takes and what the detector decided. Labels are classes and
/// fixed words only.
#[derive(Clone)]
pub struct SensorMetrics {
    sources_tracked: IntGauge,
    sources_max: IntGauge,
    evicted: IntCounter,
    overflow_sources: IntGauge,
    overflow_total: IntCounter,
    vectors: IntCounter,
    tick_seconds: Histogram,
    decisions: IntCounterVec,
    rejected: IntCounterVec,
    /// Last seen cumulative values, so that counters advance by the difference.
    last_evicted: u64,
    last_overflow_total: u64,
}

impl SensorMetrics {
    /// Registers the metrics in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> Self {
        let r = metrics.registry();
        let g = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let c = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            r.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let tick_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "netguard_detect_tick_seconds",
                "Time one detection tick takes: read the flow table, close the windows, evaluate.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid histogram");
        r.register(Box::new(tick_seconds.clone()))
            .expect("registered once");
        let decisions = IntCounterVec::new(
            Opts::new("netguard_detect_decisions_total", "Detector verdicts that raised an alert, by class and outcome (blocked, alerted, refused)."),
            &["class", "outcome"],
        )
        .expect("valid counter vec");
        r.register(Box::new(decisions.clone()))
            .expect("registered once");
        let rejected = IntCounterVec::new(
            Opts::new("netguard_detect_verdicts_rejected_total", "Verdicts (model or rule) that their class's defining evidence contradicts: never acted on, by class."),
            &["class"],
        )
        .expect("valid counter vec");
        r.register(Box::new(rejected.clone()))
            .expect("registered once");
        for class in crate::metrics::ALERT_CLASSES
            .iter()
            .filter(|c| **c != "blocklist_hit")
        {
            for outcome in ["blocked", "alerted", "refused"] {
                decisions.with_label_values(&[class, outcome]);
            }
            rejected.with_label_values(&[class]);
        }
        Self {
            sources_tracked: g(
                "netguard_detect_sources_tracked",
                "Sources with their own feature windows now.",
            ),
            sources_max: g(
                "netguard_detect_sources_max",
                "Cap on sources with their own windows (detect.features.max_sources).",
            ),
            evicted: c(
                "netguard_detect_sources_evicted_total",
                "Sources that lost (or never got) their own windows because of the cap.",
            ),
            overflow_sources: g(
                "netguard_detect_overflow_sources",
                "Distinct sources folded into the overflow aggregate in the last tick (estimate); nonzero under spoofed-source floods.",
            ),
            overflow_total: c(
                "netguard_detect_overflow_sources_total",
                "Sum of netguard_detect_overflow_sources over all ticks.",
            ),
            vectors: c(
                "netguard_detect_vectors_total",
                "Per-source feature vectors evaluated.",
            ),
            tick_seconds,
            decisions,
            rejected,
            last_evicted: 0,
            last_overflow_total: 0,
        }
    }

    fn observe(&mut self, r: &TickReport, seconds: f64) {
        let s = &r.extractor;
        self.sources_tracked
            .set(i64::try_from(s.tracked_sources).unwrap_or(i64::MAX));
        self.sources_max
            .set(i64::try_from(s.max_sources).unwrap_or(i64::MAX));
        self.overflow_sources
            .set(i64::try_from(s.overflow_sources).unwrap_or(i64::MAX));
        self.evicted
            .inc_by(s.evicted_total.saturating_sub(self.last_evicted));
        self.last_evicted = s.evicted_total;
        self.overflow_total.inc_by(
            s.overflow_sources_total
                .saturating_sub(self.last_overflow_total),
        );
        self.last_overflow_total = s.overflow_sources_total;
        self.vectors.inc_by(r.vectors as u64);
        self.tick_seconds.observe(seconds);
    }

    fn decision(&self, class: &str, outcome: &str) {
        self.decisions
            .with_label_values(&[crate::metrics::alert_class_label(class), outcome])
            .inc();
    }
}

/// Decides when to close a window early: when, since the last close, packets passed at a rate of at
/// least `min_pps`, or new flows were created at a rate of at least a fifth of that (a scan: every
/// probe a new flow, few packets), and at `FACTOR` times the rate of the last closed window. It fires at
/// the onset of a surge, not throughout one: after the early close, the surge is the new baseline.
#[derive(Clone, Debug)]
pub struct SurgeTrigger {
    min_pps: f64,
    /// When the last window closed, and the kernel's [packets passed, flows created] then.
    last_close: Option<(Instant, [u64; 2])>,
    /// Per-second rates of the last closed window, in the same order.
    baseline: [f64; 2],
}

impl SurgeTrigger {
    pub const FACTOR: f64 = 3.0;
    /// Windows shorter than this are never closed early: too few packets to judge.
    pub const MIN_WINDOW: Duration = Duration::from_millis(200);

    pub fn new(min_pps: u32) -> Self {
        Self {
            min_pps: f64::from(min_pps),
            last_close: None,
            baseline: [0.0; 2],
        }
    }

    /// A window closed at `at`, with the kernel's totals so far: [packets passed, flows created].
    pub fn closed(&mut self, at: Instant, totals: [u64; 2]) {
        if let Some((t, prev)) = self.last_close {
            let secs = at.saturating_duration_since(t).as_secs_f64();
            if secs > 0.0 {
                for i in 0..2 {
                    self.baseline[i] = totals[i].saturating_sub(prev[i]) as f64 / secs;
                }
            }
        }
        self.last_close = Some((at, totals));
    }

    /// Whether the open window should close now, given the kernel's totals at `at`.
    pub fn surging(&self, at: Instant, totals: [u64; 2]) -> bool {
        let Some((t, prev)) = self.last_close else {
            return false;
        };
        let open = at.saturating_duration_since(t);
        if self.min_pps <= 0.0 || open < Self::MIN_WINDOW {
            return false;
        }
        let floors = [self.min_pps, self.min_pps / 5.0];
        (0..2).any(|i| {
            let rate = totals[i].saturating_sub(prev[i]) as f64 / open.as_secs_f64();
            rate >= floors[i] && rate >= Self::FACTOR * self.baseline[i]
        })
    }
}

/// One line per alert in the daemon's log (at most one per source and class per cooldown).
fn log_alert(a: &netguard_store::Alert) {
    let via = a
        .evidence
        .get("rule")
        .and_then(|r| r.as_str())
        .unwrap_or("model");
    let target = match (a.dst_ip, a.dst_port) {
        (Some(ip), Some(port)) => format!(" -> {ip}:{port}"),
        (Some(ip), None) => format!(" -> {ip}"),
        _ => String::new(),
    };
    log::info!(
        "alert: {} from {}{target} ({}, risk {}, {} {:.2}, {}, x{})",
        a.class,
        a.src_ip,
        a.mitre,
        a.risk,
        via,
        a.confidence,
        a.action,
        a.count
    );
}

pub struct SensorLoop {
    surge: SurgeTrigger,
    metrics: Option<SensorMetrics>,
    dp: Arc<Mutex<Datapath>>,
    control: Control,
    extractor: Extractor,
    detector: Detector,
    enabled: bool,
    recorder: Option<BufWriter<File>>,
    ticks: u64,
}

/// The model to use, and where it came from for the log: `explicit` (flag or config) must load;
/// otherwise the one embedded in the binary.
pub fn load_model(explicit: Option<&Path>) -> Result<(Model, String), crate::detect::DetectError> {
    match explicit {
        Some(p) => Ok((Model::load(p)?, format!("the model file {}", p.display()))),
        None => Ok((
            Model::from_json(EMBEDDED_MODEL, "the model embedded in netguard")?,
            "the model embedded in this binary (--model FILE overrides it)".to_owned(),
        )),
    }
}

impl SensorLoop {
    pub fn new(
        cfg: &DetectConfig,
        sensor_id: &str,
        model: Option<Model>,
        dp: Arc<Mutex<Datapath>>,
        control: Control,
    ) -> Self {
        Self {
            surge: SurgeTrigger::new(cfg.surge_pps),
            metrics: None,
            dp,
            control,
            extractor: Extractor::new(cfg.features.clone()),
            detector: Detector::new(cfg.clone(), sensor_id, model),
            enabled: cfg.enabled,
            recorder: None,
            ticks: 0,
        }
    }

    /// Exports the loop's metrics (sources tracked against the cap, evictions, tick time, decisions).
    pub fn export_metrics(&mut self, metrics: &Metrics) {
        self.metrics = Some(SensorMetrics::register(metrics));
    }

    /// Writes every closed window's vector to `path` (CSV with the schema line), for `cargo xtask lab`.
    pub fn record_to(&mut self, path: &Path) -> std::io::Result<()> {
        let mut w = BufWriter::new(File::create(path)?);
        write_record_header(&mut w)?;
        w.flush()?;
        self.recorder = Some(w);
        Ok(())
    }

    /// Checks blocks against the never-block set and the handshake record (see `crate::trust`).
    pub fn set_trust(&mut self, trust: crate::trust::Trust) {
        self.detector.set_trust(trust);
    }

    /// Failed logins from host events (auth.log, agents) feed the failed-auth feature and rules.
    pub fn on_failed_auth(&mut self, src: IpAddr, count: u32) {
        self.extractor.observe_failed_auth(src, count);
    }

    /// The kernel's totals so far (all CPUs): [packets passed, flows created].
    fn totals(&self) -> Option<[u64; 2]> {
        use netguard_common::Counter;
        let dp = self.dp.lock().expect("datapath lock poisoned");
        let c = dp.counters().ok()?;
        Some([c.get(Counter::PassPackets), c.get(Counter::FlowsCreated)])
    }

    /// Whether traffic surged since the last window closed, so that the caller should tick now (one
    /// per-CPU counter lookup; cheap enough for every 100 ms).
    pub fn surging(&self) -> bool {
        self.totals()
            .is_some_and(|t| self.surge.surging(Instant::now(), t))
    }

    pub async fn tick(&mut self) -> Result<TickReport, crate::datapath::DatapathError> {
        let start = Instant::now();
        if let Some(t) = self.totals() {
            self.surge.closed(start, t);
        }
        let report = self.tick_inner().await?;
        if let Some(m) = self.metrics.as_mut() {
            m.observe(&report, start.elapsed().as_secs_f64());
        }
        Ok(report)
    }

    async fn tick_inner(&mut self) -> Result<TickReport, crate::datapath::DatapathError> {
        self.ticks += 1;
        // With a million active flows, reading the table and updating the windows takes 0.3-0.6 s:
        // tell tokio this worker is busy so other tasks (the API, the event reader) move elsewhere.
        let (flows, vectors) = tokio::task::block_in_place(|| {
            let flows = self.dp.lock().expect("datapath lock poisoned").flows()?;
            self.extractor.observe_flows(&flows, mono_coarse_now_ns());
            Ok::<_, crate::datapath::DatapathError>((
                flows,
                self.extractor.close_window(Utc::now()),
            ))
        })?;
        let mut report = TickReport {
            flows: flows.len(),
            vectors: vectors.len(),
            extractor: self.extractor.stats(),
            ..TickReport::default()
        };
        self.record(&vectors);
        if !self.enabled {
            return Ok(report);
        }
        // The allowlist changes rarely; refreshing it every 10 s keeps the detector from proposing
        // blocks the control plane would refuse anyway.
        if self.ticks % 10 == 1
            && let Ok((_, allow)) = self.control.list(ListKind::Allow, 0, usize::MAX).await
        {
            self.detector.set_allowlist(
                allow
                    .into_iter()
                    .filter(|v| v.enforced)
                    .map(|v| v.entry.cidr)
                    .collect(),
            );
        }
        let decisions = self.detector.evaluate(&vectors);
        for r in self.detector.take_rejected() {
            log::debug!(
                "verdict rejected: {} from {} by {}: {}",
                r.class,
                r.src,
                r.by,
                r.why
            );
            if let Some(m) = &self.metrics {
                m.rejected
                    .with_label_values(&[crate::metrics::alert_class_label(&r.class)])
                    .inc();
            }
        }
        for mut d in decisions {
            let mut outcome = if d.refused.is_some() {
                "refused"
            } else {
                "alerted"
            };
            if let Some(b) = &d.block {
                let until = chrono::Duration::from_std(b.ttl)
                    .ok()
                    .and_then(|t| Utc::now().checked_add_signed(t));
                if let Some(e) = self.control.blocked_until(b.cidr.addr(), until).await {
                    // Already dropped here for at least as long (an event-path block at the N-th
                    // failed login, a manual or an earlier block): replacing it would only change
                    // its source and reason.
                    d.alert.evidence.insert(
                        "already_blocked".into(),
                        format!("{} (source {:?})", e.cidr, e.source)
                            .to_lowercase()
                            .into(),
                    );
                    if let Some(m) = &self.metrics {
                        m.decision(&d.alert.class, "blocked");
                    }
                    report.alerts += 1;
                    log_alert(&d.alert);
                    self.control.raise_alert(d.alert).await;
                    continue;
                }
                match self
                    .control
                    .put(ListKind::Block, &[b.to_request()], EntrySource::Auto)
                    .await
                {
                    Ok(_) => {
                        report.blocks += 1;
                        outcome = "blocked";
                    }
                    Err(ControlError::Capped(_)) => {
                        // The control plane raised the one alert of this cap episode; one alert
                        // per refused source is what the cap exists to prevent.
                        self.detector.forget_block(b.cidr.addr());
                        if let Some(m) = &self.metrics {
                            m.decision(&d.alert.class, "refused");
                        }
                        continue;
                    }
                    Err(e) => {
                        // E.g. the source is allowlisted or never blocked: the alert stands, the
                        // block does not.
                        if !matches!(
                            e,
                            ControlError::Invalid(_) | ControlError::NeverBlock { .. }
                        ) {
                            log::warn!("auto-block of {} failed: {e}", b.cidr);
                        }
                        // Let the detector propose again later instead of believing the source blocked.
                        self.detector.forget_block(b.cidr.addr());
                        d.alert.action = if matches!(e, ControlError::NeverBlock { .. }) {
                            "refused"
                        } else {
                            "alerted"
                        }
                        .into();
                        d.alert
                            .evidence
                            .insert("block_refused".into(), e.to_string().into());
                        outcome = "refused";
                    }
                }
            }
            if let Some(m) = &self.metrics {
                m.decision(&d.alert.class, outcome);
            }
            report.alerts += 1;
            log_alert(&d.alert);
            self.control.raise_alert(d.alert).await;
        }
        Ok(report)
    }

    fn record(&mut self, vectors: &[FeatureVector]) {
        let Some(w) = self.recorder.as_mut() else {
            return;
        };
        let res = vectors
            .iter()
            .try_for_each(|v| record_row(w, v))
            .and_then(|()| w.flush());
        if let Err(e) = res {
            log::error!("feature recording stopped: {e}");
            self.recorder = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn a_surge_closes_the_window_early_once_and_only_when_loud() {
        let t0 = Instant::now();
        let mut s = SurgeTrigger::new(1000);
        assert!(
            !s.surging(t0, [1_000_000, 0]),
            "nothing closed yet: no reference"
        );
        s.closed(t0, [0, 0]);
        assert!(
            !s.surging(ms(t0, 100), [500, 0]),
            "a window under 200 ms is never closed early"
        );
        assert!(s.surging(ms(t0, 300), [600, 0]), "2000 pps from quiet");
        assert!(
            !s.surging(ms(t0, 300), [200, 50]),
            "667 pps and 167 new flows/s are below the floors"
        );
        assert!(s.surging(ms(t0, 300), [200, 90]), "300 new flows/s: a scan");

        // Steady 2000 pps: not a surge; triple that is.
        s.closed(ms(t0, 1000), [2000, 10]);
        assert!(!s.surging(ms(t0, 1300), [2600, 12]));
        assert!(s.surging(ms(t0, 1300), [4000, 12]));
        // After an early close, the surge is the baseline.
        s.closed(ms(t0, 1300), [4000, 12]);
        assert!(
            !s.surging(ms(t0, 1600), [6000, 14]),
            "still 6667 pps: no second early close"
        );

        let mut off = SurgeTrigger::new(0);
        off.closed(t0, [0, 0]);
        assert!(
            !off.surging(ms(t0, 500), [1_000_000, 1_000_000]),
            "0 turns it off"
        );
    }
}

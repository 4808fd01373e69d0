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
};

use chrono::Utc;
use netguard_store::{EntrySource, ListKind};

use crate::{
    control::{Control, ControlError},
    datapath::Datapath,
    detect::{DetectConfig, Detector, Extractor, ExtractorStats, FeatureVector, Model, mono_coarse_now_ns, record_row, write_record_header},
};

/// Where the shipped model lives in the source tree; `netguard run` loads it unless told otherwise.
pub const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.json");

/// What one tick saw and did, for the summary line and metrics.
#[derive(Clone, Debug, Default)]
pub struct TickReport {
    pub flows: usize,
    pub vectors: usize,
    pub alerts: usize,
    pub blocks: usize,
    pub extractor: ExtractorStats,
}

pub struct SensorLoop {
    dp: Arc<Mutex<Datapath>>,
    control: Control,
    extractor: Extractor,
    detector: Detector,
    enabled: bool,
    recorder: Option<BufWriter<File>>,
    ticks: u64,
}

/// The model to use: `explicit` (flag or config) must load; otherwise the shipped default if present.
pub fn load_model(explicit: Option<&Path>) -> Result<Option<Model>, crate::detect::DetectError> {
    match explicit {
        Some(p) => Model::load(p).map(Some),
        None if Path::new(DEFAULT_MODEL).exists() => Model::load(DEFAULT_MODEL).map(Some),
        None => Ok(None),
    }
}

impl SensorLoop {
    pub fn new(cfg: &DetectConfig, sensor_id: &str, model: Option<Model>, dp: Arc<Mutex<Datapath>>, control: Control) -> Self {
        Self {
            dp,
            control,
            extractor: Extractor::new(cfg.features.clone()),
            detector: Detector::new(cfg.clone(), sensor_id, model),
            enabled: cfg.enabled,
            recorder: None,
            ticks: 0,
        }
    }

    /// Writes every closed window's vector to `path` (CSV with the schema line), for `cargo xtask lab`.
    pub fn record_to(&mut self, path: &Path) -> std::io::Result<()> {
        let mut w = BufWriter::new(File::create(path)?);
        write_record_header(&mut w)?;
        w.flush()?;
        self.recorder = Some(w);
        Ok(())
    }

    /// Failed logins from host events (auth.log, agents) feed the failed-auth feature and rules.
    pub fn on_failed_auth(&mut self, src: IpAddr, count: u32) {
        self.extractor.observe_failed_auth(src, count);
    }

    pub async fn tick(&mut self) -> Result<TickReport, crate::datapath::DatapathError> {
        self.ticks += 1;
        // With a million active flows, reading the table and updating the windows takes 0.3-0.6 s:
        // tell tokio this worker is busy so other tasks (the API, the event reader) move elsewhere.
        let (flows, vectors) = tokio::task::block_in_place(|| {
            let flows = self.dp.lock().expect("datapath lock poisoned").flows()?;
            self.extractor.observe_flows(&flows, mono_coarse_now_ns());
            Ok::<_, crate::datapath::DatapathError>((flows, self.extractor.close_window(Utc::now())))
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
            self.detector.set_allowlist(allow.into_iter().filter(|v| v.enforced).map(|v| v.entry.cidr).collect());
        }
        for mut d in self.detector.evaluate(&vectors) {
            if let Some(b) = &d.block {
                match self.control.put(ListKind::Block, &[b.to_request()], EntrySource::Auto).await {
                    Ok(_) => report.blocks += 1,
                    Err(e) => {
                        // E.g. the source is allowlisted: the alert stands, the block does not.
                        if !matches!(e, ControlError::Invalid(_)) {
                            log::warn!("auto-block of {} failed: {e}", b.cidr);
                        }
                        // Let the detector propose again later instead of believing the source blocked.
                        self.detector.forget_block(b.cidr.addr());
                        d.alert.action = "alerted".into();
                        d.alert.evidence.insert("block_refused".into(), e.to_string().into());
                    }
                }
            }
            report.alerts += 1;
            self.control.raise_alert(d.alert).await;
        }
        Ok(report)
    }

    fn record(&mut self, vectors: &[FeatureVector]) {
        let Some(w) = self.recorder.as_mut() else { return };
        let res = vectors.iter().try_for_each(|v| record_row(w, v)).and_then(|()| w.flush());
        if let Err(e) = res {
            log::error!("feature recording stopped: {e}");
            self.recorder = None;
        }
    }
}

//! Host events from agents (`POST /api/v1/events`) and from this sensor's own sshd log, counted
//! exactly once and turned into blocks the moment a threshold is reached.
//!
//! ```text
//! POST /api/v1/events ─► normalize ─► Store::record_events (dedup) ─► new ones ─┐
//! auth.log follower ──► local (fingerprint, in-memory dedup) ──────────────────┤
//!                                                                               ▼
//!                    Tracker (global + per-VM sliding windows) ─► Trip ─► Control::put (kernel, then
//!                    store) + Control::raise_alert (store + WebSocket)
//! ```
//!
//! The local path never waits on the store before the kernel: the follower's event goes through the
//! tracker and `Control::put` first, and the event is written to the store afterwards (see
//! [`local`]). Agents' events are deduplicated by the store first, since the store is what makes a
//! retried batch recognisable across requests and sensors.
//!
//! Thresholds are read live from [`Events::thresholds`]; `PUT /api/v1/thresholds` replaces them and
//! the next event is judged by the new values.

mod config;
mod decide;
mod local;
pub mod normalize;
mod persist;
pub mod tracker;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use chrono::Utc;
use netguard_store::{HostEventRecord, StoreError};
use serde::Serialize;
use serde_json::Value;

pub use config::{EventsConfig, OnSuccess, Rule, RuleOverride, Thresholds, migrate_legacy};
pub use decide::{BlockOutcome, class_of};
pub use local::{LocalReport, local_record};
pub use normalize::{Poster, Rejection, fingerprint};
pub use persist::THRESHOLDS_FILE;
pub use tracker::{Escalation, Failure, RuleKind, Tracker, Trip};

use crate::{
    control::{Control, FieldError},
    metrics::{EventResult, EventSource, Metrics},
};

/// What became of one posted item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// New: stored and counted.
    Accepted,
    /// Seen before within the retention window: acknowledged, not counted again.
    Duplicate,
    /// Invalid: see `field` and `reason`.
    Rejected,
}

/// One item of the answer to `POST /api/v1/events`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ItemResult {
    /// Position in the posted array (0 for a single object).
    pub index: usize,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The offending field of a rejected item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to `POST /api/v1/events`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub items: Vec<ItemResult>,
    /// Blocks (or alerts) that these events caused.
    pub decisions: Vec<BlockOutcome>,
}

/// The host-event engine; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    control: Control,
    metrics: Arc<Metrics>,
    cfg: RwLock<EventsConfig>,
    tracker: Mutex<Tracker>,
    local: Mutex<local::LocalDedup>,
    dry_run: bool,
    /// The state dir where `PUT /thresholds` keeps the thresholds, once set.
    keep_in: OnceLock<PathBuf>,
    put_order: Mutex<()>,
}

/// Why `PUT /api/v1/thresholds` did not take effect.
#[derive(Debug)]
pub enum SetThresholdsError {
    /// Values out of range, each named by its field.
    Invalid(Vec<FieldError>),
    /// They could not be kept for the next start, so they were not applied either.
    Save(String),
}

fn escalation(cfg: &EventsConfig) -> Escalation {
    Escalation {
        factor: cfg.escalation_factor,
        max_ban_time: cfg.max_ban_time,
        memory: cfg.offense_memory,
    }
}

impl Events {
    /// `cfg` should have passed [`EventsConfig::validate`]; `dry_run` alerts without blocking.
    pub fn new(control: Control, metrics: Arc<Metrics>, cfg: EventsConfig, dry_run: bool) -> Self {
        let tracker = Tracker::new(cfg.max_tracked, escalation(&cfg));
        Events {
            inner: Arc::new(Inner {
                control,
                metrics,
                tracker: Mutex::new(tracker),
                local: Mutex::new(local::LocalDedup::default()),
                cfg: RwLock::new(cfg),
                dry_run,
                keep_in: OnceLock::new(),
                put_order: Mutex::new(()),
            }),
        }
    }

    pub fn config(&self) -> EventsConfig {
        self.inner
            .cfg
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> Thresholds {
        self.config().thresholds()
    }

    /// From now on `PUT /thresholds` keeps the thresholds in `state_dir` too. Thresholds kept there
    /// by an earlier run replace those of the config, now: returns where they came from, for the
    /// start's log.
    pub fn keep_thresholds_in(&self, state_dir: &Path) -> Result<Option<PathBuf>, String> {
        let kept = persist::load(state_dir)?;
        let _ = self.inner.keep_in.set(state_dir.to_owned());
        Ok(kept.map(|t| {
            self.apply_thresholds(&t);
            state_dir.join(THRESHOLDS_FILE)
        }))
    }

    /// Replaces the thresholds; the next event is judged by them. Counts already made are kept
    /// (a window is simply judged against the new numbers). With a state dir (see
    /// [`Events::keep_thresholds_in`]) they are saved first, and not applied if that fails: what a
    /// restart would bring back is what is in force.
    pub fn set_thresholds(&self, t: Thresholds) -> Result<Thresholds, SetThresholdsError> {
        t.validate("").map_err(SetThresholdsError::Invalid)?;
        // One writer at a time, so that the file and memory agree.
        let _one = self
            .inner
            .put_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(dir) = self.inner.keep_in.get() {
            persist::save(dir, &t).map_err(SetThresholdsError::Save)?;
        }
        self.apply_thresholds(&t);
        Ok(t)
    }

    fn apply_thresholds(&self, t: &Thresholds) {
        let mut cfg = self
            .inner
            .cfg
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        cfg.global = t.global.clone();
        cfg.per_vm = t.per_vm.clone();
        cfg.vms = t.vms.clone();
        log::info!(
            "thresholds: global {} in {}, per VM {} in {}, {} VM override(s)",
            t.global.max_retry,
            humantime::format_duration(t.global.find_time),
            t.per_vm.max_retry,
            humantime::format_duration(t.per_vm.find_time),
            t.vms.len()
        );
    }

    pub fn max_batch(&self) -> usize {
        self.inner
            .cfg
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .max_batch
    }

    pub fn sensor_id(&self) -> &str {
        self.inner.control.sensor_id()
    }

    /// Counts new events in the tracker; returns the trips, in order. `own`: they come from this
    /// sensor's own auth-log follower (its own evidence, see [`tracker`]), not from agents or the
    /// store.
    fn count(&self, events: &[&HostEventRecord], own: bool) -> Vec<Trip> {
        let cfg = self
            .inner
            .cfg
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let th = cfg.thresholds();
        let now = Utc::now();
        let mut tracker = self
            .inner
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tracker.set_escalation(escalation(&cfg));
        let mut trips = Vec::new();
        for e in events {
            if e.failure {
                let f = Failure {
                    ts: e.ts,
                    ip: e.src_ip,
                    vm: &e.source_vm_id,
                    user: e.username.as_deref(),
                    service: &e.service,
                    own,
                };
                trips.extend(tracker.failure(&th, &f, now));
            } else {
                tracker.success(
                    e.src_ip,
                    &e.source_vm_id,
                    e.username.as_deref(),
                    e.ts,
                    cfg.on_success,
                );
            }
        }
        trips
    }

    /// `POST /api/v1/events`: normalises every item, stores the valid ones exactly once, counts the
    /// new ones and acts on any threshold they reach. Fails only if the store cannot answer (then
    /// nothing was counted, and the agent should retry the whole batch).
    pub async fn ingest(
        &self,
        items: &[Value],
        poster: &Poster,
    ) -> Result<IngestReport, StoreError> {
        let received_at = normalize::to_millis(Utc::now());
        let mut results: Vec<ItemResult> = Vec::with_capacity(items.len());
        let mut good: Vec<HostEventRecord> = Vec::new();
        let mut good_index: Vec<usize> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match normalize::normalize(item, poster, received_at) {
                Ok(rec) => {
                    good_index.push(results.len());
                    results.push(ItemResult {
                        index,
                        status: ItemStatus::Accepted,
                        fingerprint: Some(rec.fingerprint.clone()),
                        field: None,
                        reason: None,
                    });
                    good.push(rec);
                }
                Err(r) => results.push(ItemResult {
                    index,
                    status: ItemStatus::Rejected,
                    fingerprint: None,
                    field: Some(r.field.to_owned()),
                    reason: Some(r.reason),
                }),
            }
        }
        let retention = self.config().retention;
        let flags = if good.is_empty() {
            Vec::new()
        } else {
            self.inner
                .control
                .store()
                .record_events(&good, retention)
                .await?
        };
        let mut fresh = Vec::new();
        for ((rec, new), at) in good.iter().zip(&flags).zip(&good_index) {
            if *new {
                fresh.push(rec);
            } else {
                results[*at].status = ItemStatus::Duplicate;
            }
        }
        // Agents' events: never the sensor's own evidence, whatever VM they name.
        let trips = self.count(&fresh, false);
        let decisions = self.apply(trips).await;
        let count = |s: ItemStatus| results.iter().filter(|r| r.status == s).count();
        let report = IngestReport {
            accepted: count(ItemStatus::Accepted),
            duplicates: count(ItemStatus::Duplicate),
            rejected: count(ItemStatus::Rejected),
            items: results,
            decisions,
        };
        let m = self.inner.metrics.host_events();
        m.events(
            EventSource::Api,
            EventResult::Accepted,
            report.accepted as u64,
        );
        m.events(
            EventSource::Api,
            EventResult::Duplicate,
            report.duplicates as u64,
        );
        m.events(
            EventSource::Api,
            EventResult::Rejected,
            report.rejected as u64,
        );
        Ok(report)
    }
}

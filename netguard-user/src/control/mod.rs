//! The control plane: the one path through which every blocklist and allowlist change flows, whether
//! it comes from REST, the CLI, automatic response, or another sensor sharing the store.
//!
//! Order of a change: validate everything, then write the kernel and the store. The kernel is the
//! enforcement and wins: if the kernel refuses (a full table), the store write is undone and the
//! caller gets the error; if the store fails (Redis unreachable, out of memory, disk full, a
//! permission change), the kernel entry stays. The resilient store queues such writes and retries
//! them (`netguard_store_backlog`, `/health` `store.backlog`, and a log line say so), so a Redis
//! whose disk fills never un-blocks anything on the sensors that share it.

pub mod caps;
mod coverage;
mod expiry;
mod hits;
mod push;
mod reconcile;
pub mod request;
mod snapshot;
mod state;
mod sync;
mod write;

use std::{
    collections::HashSet,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_store::{
    Alert, AlertQuery, EntrySource, ListEntry, ListKind, Scope, Store, StoreError,
};
use tokio::sync::{Notify, broadcast};

use crate::datapath::{Datapath, DatapathError};
use crate::trust::{Protected, Trust};
pub use caps::{AutoCaps, Cap, Capped};
pub use hits::HitAlerts;
pub use push::{Change, MAX_PUSHED_ENTRIES, PushEvent, Removal};
pub use reconcile::LoadReport;
use reconcile::{table, table_mut};
pub use request::{EntryRequest, FieldError};
pub use snapshot::SNAPSHOT_FILE;
use state::Mirror;

#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub sensor_id: String,
    /// Largest accepted bulk request (items).
    pub max_bulk: usize,
    /// Minimum time between two blocklist-hit alerts for the same source.
    pub hit_alert_cooldown: Duration,
    /// Caps on automatic blocks (sources `auto` and `event`).
    pub auto_caps: AutoCaps,
    /// Where to keep a local snapshot of the lists (a shared Redis: [`SNAPSHOT_FILE`] in the state
    /// dir). When set and the store cannot be read at start, the lists come from this file and
    /// are reconciled with the store once it answers.
    pub snapshot: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            sensor_id: "local".into(),
            max_bulk: 100_000,
            hit_alert_cooldown: Duration::from_secs(60),
            auto_caps: AutoCaps::default(),
            snapshot: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{} invalid item(s); nothing was applied. First: {}: {}", .0.len(), .0[0].field, .0[0].error)]
    Invalid(Vec<FieldError>),
    #[error("{count} items is over the bulk limit of {limit}; split the request")]
    TooLarge { count: usize, limit: usize },
    #[error("the state store refused the change ({0}); nothing was applied")]
    Store(#[source] StoreError),
    #[error("the kernel refused the change: {0}")]
    Datapath(#[source] DatapathError),
    /// An automatic block would overlap an address this host depends on (see `crate::trust`).
    #[error("{cidr} is never blocked automatically: {}", .protected.reason())]
    NeverBlock { cidr: IpNet, protected: Protected },
    /// An automatic block hit a cap (see [`caps`]).
    #[error("automatic block of {} refused by the {} cap: {}", .0.cidr, .0.cap.label(), .0.detail)]
    Capped(Capped),
}

/// An entry as the API shows it: the stored entry, whether this sensor enforces it, and its kernel
/// hit counter here.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EntryView {
    #[serde(flatten)]
    pub entry: ListEntry,
    pub enforced: bool,
    pub hits: u64,
}

/// Counts of a successful put.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PutOutcome {
    /// Items in the request after removing duplicates.
    pub applied: usize,
    /// Entries that were not present before (the rest replaced existing ones).
    pub created: usize,
    pub entries: Vec<ListEntry>,
}

struct Inner {
    cfg: ControlConfig,
    dp: Arc<Mutex<Datapath>>,
    store: Arc<dyn Store>,
    /// The mirror; holding its lock also serialises writers, so validation and application of one
    /// request see a consistent state.
    mirror: tokio::sync::Mutex<Mirror>,
    push: broadcast::Sender<PushEvent>,
    expiry_wake: Notify,
    hits: Mutex<HitAlerts>,
    trust: Trust,
    caps: Mutex<caps::CapState>,
    capped_total: prometheus::IntCounterVec,
    /// `netguard_store_malformed_entries_total`.
    malformed_total: prometheus::IntCounter,
    /// `netguard_fleet_changes_refused_total`.
    fleet_refused_total: prometheus::IntCounter,
    /// Wakes the snapshot writer after a change to the mirror.
    snapshot_wake: Notify,
}

/// A task of the control plane, for its owner to spawn (see [`Control::start_owned`]).
pub type Background = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// Loads the stored lists into the kernel (a restart loses no block) and starts the expiry timer
    /// and, for a shared store, the fleet subscription.
    pub async fn start(
        cfg: ControlConfig,
        dp: Arc<Mutex<Datapath>>,
        store: Arc<dyn Store>,
    ) -> Result<Self, ControlError> {
        Self::start_with_trust(cfg, dp, store, Trust::default()).await
    }

    /// [`Control::start`] with the daemon's never-block set and handshake record, which every block
    /// is checked against.
    pub async fn start_with_trust(
        cfg: ControlConfig,
        dp: Arc<Mutex<Datapath>>,
        store: Arc<dyn Store>,
        trust: Trust,
    ) -> Result<Self, ControlError> {
        let (control, background) = Self::start_owned(cfg, dp, store, trust).await?;
        for task in background {
            tokio::spawn(task);
        }
        Ok(control)
    }

    /// [`Control::start_with_trust`], handing back the control plane's background tasks (the
    /// expiry timer, the snapshot writer and the fleet subscription) for the caller to spawn, own
    /// and cancel, instead of spawning them itself.
    pub async fn start_owned(
        cfg: ControlConfig,
        dp: Arc<Mutex<Datapath>>,
        store: Arc<dyn Store>,
        trust: Trust,
    ) -> Result<(Self, Vec<Background>), ControlError> {
        let (push, _) = broadcast::channel(4096);
        let hits = Mutex::new(HitAlerts::new(cfg.hit_alert_cooldown));
        let capped_total = caps::capped_counter();
        let control = Control {
            inner: Arc::new(Inner {
                caps: Mutex::new(caps::CapState::new(cfg.auto_caps.clone())),
                capped_total,
                trust,
                cfg,
                dp,
                store,
                mirror: tokio::sync::Mutex::new(Mirror::default()),
                push,
                expiry_wake: Notify::new(),
                hits,
                malformed_total: prometheus::IntCounter::new(
                    "netguard_store_malformed_entries_total",
                    "Stored list entries skipped because they could not be read (damaged or hand-edited records); each load that skips some raises one alert.",
                )
                .expect("valid counter"),
                fleet_refused_total: prometheus::IntCounter::new(
                    "netguard_fleet_changes_refused_total",
                    "Entries from other sensors (the change feed) that this sensor refused to enforce: they overlap its allowlist or never-block set, or cover every address.",
                )
                .expect("valid counter"),
                snapshot_wake: Notify::new(),
            }),
        };
        if let Err(e) = control.reconcile().await {
            // The store cannot be read: start from the last lists this sensor knew, if it kept them.
            let ControlError::Store(store_err) = &e else {
                return Err(e);
            };
            let Some(path) = control.inner.cfg.snapshot.clone() else {
                return Err(e);
            };
            let snap = match tokio::task::spawn_blocking({
                let path = path.clone();
                move || snapshot::read(&path)
            })
            .await
            .expect("snapshot read task")
            {
                Ok(Some(s)) => s,
                Ok(None) => return Err(e),
                Err(read_err) => {
                    log::error!(
                        "the list snapshot {} cannot be read: {read_err}",
                        path.display()
                    );
                    return Err(e);
                }
            };
            let written = snap.written_at;
            let report = control.load(snap.entries()).await;
            log::warn!(
                "the store cannot be read ({store_err}): enforcing {} blocklist and {} allowlist entries from the local snapshot of {written} ({}); the lists are reconciled with the store when it answers",
                report.enforced[0],
                report.enforced[1],
                path.display()
            );
        }
        let mut background: Vec<Background> = vec![Box::pin(expiry::run(control.clone()))];
        if let Some(path) = control.inner.cfg.snapshot.clone() {
            background.push(Box::pin(snapshot::run(control.clone(), path)));
            control.inner.snapshot_wake.notify_one();
        }
        if let Some(feed) = sync::subscribe(control.clone()).await {
            background.push(Box::pin(feed));
        }
        Ok((control, background))
    }

    /// The never-block set and handshake record this control plane checks blocks against.
    pub fn trust(&self) -> &Trust {
        &self.inner.trust
    }

    /// `netguard_response_capped_total{cap}`, for the daemon's registry.
    pub fn capped_counter(&self) -> prometheus::IntCounterVec {
        self.inner.capped_total.clone()
    }

    /// The control plane's other counters (`netguard_store_malformed_entries_total`,
    /// `netguard_fleet_changes_refused_total`), for the daemon's registry.
    pub fn counters(&self) -> [prometheus::IntCounter; 2] {
        [
            self.inner.malformed_total.clone(),
            self.inner.fleet_refused_total.clone(),
        ]
    }

    pub fn sensor_id(&self) -> &str {
        &self.inner.cfg.sensor_id
    }

    pub fn max_bulk(&self) -> usize {
        self.inner.cfg.max_bulk
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn datapath(&self) -> &Arc<Mutex<Datapath>> {
        &self.inner.dp
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PushEvent> {
        self.inner.push.subscribe()
    }

    fn publish(&self, ev: PushEvent) {
        if !matches!(ev, PushEvent::Alert(_)) {
            self.inner.snapshot_wake.notify_one();
        }
        // No receivers is fine: nobody is watching.
        let _ = self.inner.push.send(ev);
    }

    /// Whether this sensor enforces entries of `scope`.
    pub fn applies(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Global => true,
            Scope::Sensor(id) => *id == self.inner.cfg.sensor_id,
        }
    }

    /// The blocklist entry that makes this sensor drop `ip` from now until at least `until` (None:
    /// for good), if there is one: the most specific such entry.
    pub async fn blocked_until(
        &self,
        ip: std::net::IpAddr,
        until: Option<DateTime<Utc>>,
    ) -> Option<ListEntry> {
        let mirror = self.inner.mirror.lock().await;
        mirror
            .most_specific(ip, |e| {
                self.applies(&e.scope)
                    && match (e.expires_at, until) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(t), Some(u)) => t >= u,
                    }
            })
            .cloned()
    }

    fn dp(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.inner.dp.lock().expect("datapath lock poisoned")
    }

    /// Entries (all scopes) with this sensor's kernel hit counts, sorted by CIDR; `total` before paging.
    pub async fn list(
        &self,
        kind: ListKind,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<EntryView>), ControlError> {
        // The page is copied under the mirror's lock; the hit counters (one syscall per entry) are
        // read afterwards on a blocking thread, taking the datapath lock for one chunk at a time,
        // so that a long page neither occupies a runtime worker nor holds writers and `/health`
        // behind the datapath lock for the whole loop.
        let (total, page) = {
            let mirror = self.inner.mirror.lock().await;
            let list = mirror.list(kind);
            let page: Vec<(ListEntry, bool)> = list
                .values()
                .skip(offset)
                .take(limit)
                .map(|e| (e.clone(), self.applies(&e.scope)))
                .collect();
            (list.len(), page)
        };
        const CHUNK: usize = 256;
        let dp = self.inner.dp.clone();
        let views = tokio::task::spawn_blocking(move || {
            let mut views = Vec::with_capacity(page.len());
            let mut page = page.into_iter().peekable();
            while page.peek().is_some() {
                let dp = dp.lock().expect("datapath lock poisoned");
                for (entry, enforced) in page.by_ref().take(CHUNK) {
                    let hits = match kind {
                        ListKind::Block if enforced => dp
                            .blocklist
                            .get(entry.cidr)
                            .ok()
                            .flatten()
                            .map_or(0, |v| v.hits),
                        ListKind::Allow if enforced => dp
                            .allowlist
                            .get(entry.cidr)
                            .ok()
                            .flatten()
                            .map_or(0, |v| v.overrides),
                        _ => 0,
                    };
                    views.push(EntryView {
                        entry,
                        enforced,
                        hits,
                    });
                }
            }
            views
        })
        .await
        .expect("hit counter reader panicked");
        Ok((total, views))
    }

    /// Number of entries per scope class, for metrics: (global, this sensor's, other sensors').
    pub async fn entry_counts(&self, kind: ListKind) -> (usize, usize, usize) {
        let mirror = self.inner.mirror.lock().await;
        let mut c = (0, 0, 0);
        for e in mirror.list(kind).values() {
            match &e.scope {
                Scope::Global => c.0 += 1,
                s if self.applies(s) => c.1 += 1,
                _ => c.2 += 1,
            }
        }
        c
    }

    pub async fn alerts(&self, q: AlertQuery) -> Result<Vec<Alert>, ControlError> {
        self.inner
            .store
            .alerts(q)
            .await
            .map_err(ControlError::Store)
    }

    /// Stores and pushes an alert. A store failure is logged, not returned: the alert still reaches
    /// WebSocket clients and metrics.
    pub async fn raise_alert(&self, alert: Alert) {
        if let Err(e) = self.inner.store.append_alert(&alert).await {
            log::warn!("alert {} not stored: {e}", alert.id);
        }
        self.publish(PushEvent::Alert(alert));
    }

    /// A blocked source was seen (kernel BLOCK_HIT event): raise a rate-limited alert.
    pub async fn on_block_hit(
        &self,
        src: IpAddr,
        dst: IpAddr,
        dst_port: u16,
        proto: u8,
    ) -> Option<Alert> {
        let entry = {
            // An index lookup, not a scan: forged hits from blocked sources must not hold the
            // mirror's lock long enough to starve writes.
            let mirror = self.inner.mirror.lock().await;
            mirror
                .most_specific(src, |e| self.applies(&e.scope))
                .cloned()?
        };
        let alert = self.inner.hits.lock().expect("hits lock").alert(
            &self.inner.cfg.sensor_id,
            &entry,
            src,
            dst,
            dst_port,
            proto,
        )?;
        self.raise_alert(alert.clone()).await;
        Some(alert)
    }
}

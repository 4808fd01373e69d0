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
pub mod request;
mod snapshot;
mod state;
mod sync;

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

    /// Adds or replaces entries. All items are validated first; any invalid item fails the whole
    /// request with every item's problem listed, and nothing is applied.
    pub async fn put(
        &self,
        kind: ListKind,
        reqs: &[EntryRequest],
        source: EntrySource,
    ) -> Result<PutOutcome, ControlError> {
        if reqs.len() > self.inner.cfg.max_bulk {
            return Err(ControlError::TooLarge {
                count: reqs.len(),
                limit: self.inner.cfg.max_bulk,
            });
        }
        let now = Utc::now();
        let bulk = reqs.len() > 1;
        let mut errors = Vec::new();
        let mut entries = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            // Field names like `items[3].cidr` are built only for items that fail.
            match request::to_entry(r, source, now, "") {
                Ok(e) => entries.push((i, e)),
                Err(mut e) if bulk => {
                    e.field = format!("items[{i}].{}", e.field);
                    errors.push(e);
                }
                Err(e) => errors.push(e),
            }
        }
        let automatic = matches!(source, EntrySource::Auto | EntrySource::Event);
        if kind == ListKind::Block {
            for (i, e) in &entries {
                let Some(p) = self.inner.trust.never_block.conflict(&e.cidr) else {
                    continue;
                };
                if automatic && !bulk {
                    return Err(ControlError::NeverBlock {
                        cidr: e.cidr,
                        protected: p,
                    });
                }
                if !reqs[*i].force {
                    let prefix = if bulk {
                        format!("items[{i}].")
                    } else {
                        String::new()
                    };
                    errors.push(FieldError::new(
                        format!("{prefix}cidr"),
                        format!("{} would block {}; NetGuard never blocks what this host depends on (GET /api/v1/never-block lists them): send \"force\": true to block it anyway", e.cidr, p.reason()),
                    ));
                }
            }
        }
        let mut mirror = self.inner.mirror.lock().await;
        if kind == ListKind::Block {
            errors.extend(self.allowlist_conflicts(&mirror, &entries, bulk));
            errors.extend(coverage::refusals(
                &mirror,
                &entries,
                |i| reqs[i].force,
                |s| self.applies(s),
                bulk,
            ));
        }
        if !errors.is_empty() {
            return Err(ControlError::Invalid(errors));
        }
        if kind == ListKind::Block && automatic {
            self.check_caps(&entries).await?;
        }
        // Later duplicates of the same (cidr, scope) win, as if applied one after another.
        let mut seen = HashSet::new();
        let mut entries: Vec<ListEntry> = entries
            .into_iter()
            .rev()
            .map(|(_, e)| e)
            .filter(|e| seen.insert((e.cidr, e.scope.clone())))
            .collect();
        entries.reverse();
        self.apply(&mut mirror, kind, entries, source).await
    }

    /// Allowlisted addresses can never be blocked: refuse a block that overlaps an allowlist entry
    /// in either direction (covering it, or inside it).
    fn allowlist_conflicts(
        &self,
        mirror: &Mirror,
        entries: &[(usize, ListEntry)],
        bulk: bool,
    ) -> Vec<FieldError> {
        let allow = mirror.list(ListKind::Allow);
        if allow.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, e) in entries {
            let prefix = if bulk {
                format!("items[{i}].")
            } else {
                String::new()
            };
            if let Some(((a, scope), _)) = allow.iter().find(|((a, s), _)| {
                request::overlaps(a, &e.cidr)
                    && (*s == Scope::Global || e.scope == Scope::Global || *s == e.scope)
            }) {
                out.push(FieldError::new(
                    format!("{prefix}cidr"),
                    format!("{} overlaps allowlisted {a} (scope {scope}); allowlisted addresses are never blocked: remove the allowlist entry first", e.cidr),
                ));
            }
        }
        out
    }

    async fn apply(
        &self,
        mirror: &mut Mirror,
        kind: ListKind,
        entries: Vec<ListEntry>,
        source: EntrySource,
    ) -> Result<PutOutcome, ControlError> {
        // The new CIDRs this sensor must now enforce; refuse up front if they do not fit.
        let fresh: Vec<IpNet> = {
            let dp = self.dp();
            let table = table(&dp, kind);
            let fresh: Vec<IpNet> = entries
                .iter()
                .filter(|e| self.applies(&e.scope) && !table.contains(&e.cidr))
                .map(|e| e.cidr)
                .collect();
            table
                .check_capacity(&fresh)
                .map_err(ControlError::Datapath)?;
            fresh
        };
        // Kernel and store are written concurrently (a 100k bulk spends ~120 ms in the one and ~250 ms
        // in the other). A kernel failure undoes the store write; a store failure leaves the kernel
        // entry in place (the kernel enforces, the store catches up: see the module docs).
        let dp = self.inner.dp.clone();
        let to_insert = fresh.clone();
        let kernel = tokio::task::spawn_blocking(move || {
            let mut dp = dp.lock().expect("datapath lock poisoned");
            table_mut(&mut dp, kind).insert_many(&to_insert)
        });
        let (kernel, stored) = tokio::join!(kernel, self.inner.store.put_entries(kind, &entries));
        let kernel = kernel.expect("kernel insert task panicked");
        if let Err(e) = kernel {
            {
                let mut dp = self.dp();
                for cidr in &fresh {
                    let _ = table_mut(&mut dp, kind).remove(*cidr);
                }
            }
            if stored.is_ok() {
                for e in &entries {
                    if let Err(err) = self.inner.store.remove_entry(kind, &e.cidr, &e.scope).await {
                        log::error!(
                            "undoing {} in the store after a kernel failure: {err}",
                            e.cidr
                        );
                    }
                }
            }
            return Err(ControlError::Datapath(e));
        }
        match stored {
            Ok(()) => {}
            // Nothing was written anywhere yet that needs undoing: the entries are refused whole.
            Err(e @ StoreError::Invalid { .. }) => {
                let mut dp = self.dp();
                for cidr in &fresh {
                    let _ = table_mut(&mut dp, kind).remove(*cidr);
                }
                return Err(ControlError::Store(e));
            }
            // The resilient store queues what it can retry; what reaches here (its queue is full,
            // or a store without a queue failed) is enforced but not stored.
            Err(e) => log::error!(
                "{} {} entr{} enforced in the kernel but NOT saved in the store ({e}); they hold on this sensor until it restarts",
                entries.len(),
                kind.as_str(),
                if entries.len() == 1 { "y" } else { "ies" }
            ),
        }
        let mut created = 0;
        for e in &entries {
            if mirror.put(kind, e.clone()).is_none() {
                created += 1;
            }
        }
        self.inner.expiry_wake.notify_one();
        self.publish(PushEvent::change(kind, &entries, source));
        Ok(PutOutcome {
            applied: entries.len(),
            created,
            entries,
        })
    }

    /// Removes `cidr` (under `scope`, or under every scope when None). Idempotent: returns how many
    /// entries existed.
    pub async fn remove(
        &self,
        kind: ListKind,
        cidr: &str,
        scope: Option<&str>,
    ) -> Result<usize, ControlError> {
        let cidr = request::parse_cidr(cidr)
            .map_err(|e| ControlError::Invalid(vec![FieldError::new("cidr", e)]))?;
        let scope = scope
            .map(|s| request::parse_scope(Some(s)))
            .transpose()
            .map_err(|e| ControlError::Invalid(vec![FieldError::new("scope", e)]))?;
        let mut mirror = self.inner.mirror.lock().await;
        let scopes = match scope {
            Some(s) => vec![s],
            None => mirror.scopes_of(kind, &cidr),
        };
        let mut removed = 0;
        for s in scopes {
            let in_store = self
                .inner
                .store
                .remove_entry(kind, &cidr, &s)
                .await
                .map_err(ControlError::Store)?;
            if self.forget(&mut mirror, kind, cidr, &s, "removed")? || in_store {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Drops an entry from the mirror and, when no other applicable entry keeps the CIDR, from the
    /// kernel; announces it. Returns whether the mirror had it.
    fn forget(
        &self,
        mirror: &mut Mirror,
        kind: ListKind,
        cidr: IpNet,
        scope: &Scope,
        reason: &'static str,
    ) -> Result<bool, ControlError> {
        let had = mirror.remove(kind, &cidr, scope).is_some();
        let still_enforced = mirror
            .scopes_of(kind, &cidr)
            .iter()
            .any(|s| self.applies(s));
        if !still_enforced {
            table_mut(&mut self.dp(), kind)
                .remove(cidr)
                .map_err(ControlError::Datapath)?;
        }
        if had {
            self.publish(PushEvent::removal(kind, cidr, scope.clone(), reason));
        }
        Ok(had)
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

    /// Re-reads both lists from the store and makes the mirror and kernel match them, as far as
    /// the kernel tables allow (see [`Control::load`]). Entries the store could not read are
    /// skipped, counted and reported in one alert per reconcile.
    pub async fn reconcile(&self) -> Result<LoadReport, ControlError> {
        let block = self
            .inner
            .store
            .list_entries(ListKind::Block)
            .await
            .map_err(ControlError::Store)?;
        let allow = self
            .inner
            .store
            .list_entries(ListKind::Allow)
            .await
            .map_err(ControlError::Store)?;
        let malformed = self.inner.store.take_malformed();
        if !malformed.is_empty() {
            self.inner.malformed_total.inc_by(malformed.len() as u64);
            log::error!(
                "{} stored entr{} could not be read and were skipped (first: {}); every other entry is enforced. Fix or delete them in the store",
                malformed.len(),
                if malformed.len() == 1 { "y" } else { "ies" },
                malformed[0]
            );
            let mut evidence = serde_json::Map::new();
            evidence.insert("malformed_entries".into(), malformed.len().into());
            evidence.insert(
                "keys".into(),
                malformed
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .into(),
            );
            evidence.insert("note".into(), "one alert per load; netguard_store_malformed_entries_total counts every skipped entry".into());
            self.raise_alert(self.system_alert("store_malformed_entry", "T1565.001", evidence))
                .await;
        }
        Ok(self
            .load([(ListKind::Block, block), (ListKind::Allow, allow)])
            .await)
    }

    /// Makes the mirror and the kernel hold `lists` (complete lists, all scopes), changing only
    /// the difference: what the kernel holds and the lists do not is removed, what is missing is
    /// inserted as far as the table has room. Whatever happens half-way, the mirror tracks exactly
    /// what the kernel holds (so every kernel entry still expires and can be removed); entries that
    /// did not fit stay out of both, and are reported.
    pub async fn load(&self, lists: [(ListKind, Vec<ListEntry>); 2]) -> LoadReport {
        let now = Utc::now();
        let mut report = LoadReport::default();
        let mut mirror = self.inner.mirror.lock().await;
        let mut next = Mirror::default();
        for (i, (kind, entries)) in lists.into_iter().enumerate() {
            let entries: Vec<ListEntry> =
                entries.into_iter().filter(|e| !e.is_expired(now)).collect();
            let want: HashSet<IpNet> = entries
                .iter()
                .filter(|e| self.applies(&e.scope))
                .map(|e| e.cidr)
                .collect();
            let mut dp = self.dp();
            let t = table_mut(&mut dp, kind);
            for n in t.nets().into_iter().filter(|n| !want.contains(n)) {
                if let Err(e) = t.remove(n) {
                    log::error!("removing stale {n} from the kernel failed: {e}");
                }
            }
            // In list order, so what does not fit is the same tail every time.
            let mut seen = HashSet::new();
            let missing: Vec<IpNet> = entries
                .iter()
                .filter(|e| self.applies(&e.scope) && !t.contains(&e.cidr) && seen.insert(e.cidr))
                .map(|e| e.cidr)
                .collect();
            if let Err(first) = t.insert_many(&missing) {
                // Too many for the table (or a kernel error): one at a time, keeping what fits.
                for n in &missing {
                    if let Err(e) = t.insert_many(std::slice::from_ref(n)) {
                        if report.not_fitting.is_empty() {
                            log::error!(
                                "the kernel {} table refused entries ({first}); first refused: {n}: {e}",
                                kind.as_str()
                            );
                        }
                        report.not_fitting.push((kind, *n));
                    }
                }
            }
            // The kernel now: entries of other scopes are kept (listed, not enforced); ours only
            // if the kernel holds them.
            let held: HashSet<IpNet> = t.nets().into_iter().collect();
            drop(dp);
            for e in entries {
                if !self.applies(&e.scope) || held.contains(&e.cidr) {
                    next.put(kind, e);
                }
            }
            // A stale entry whose removal failed stays tracked under its old entry.
            for n in &held {
                if next.scopes_of(kind, n).is_empty() {
                    for s in mirror.scopes_of(kind, n) {
                        if let Some(old) = mirror.remove(kind, n, &s) {
                            next.put(kind, old);
                        }
                    }
                }
            }
            report.enforced[i] = held.len();
        }
        *mirror = next;
        drop(mirror);
        if !report.not_fitting.is_empty() {
            log::error!(
                "{} entr{} did not fit in the kernel tables and are NOT enforced on this sensor (raise the [datapath] map sizes); everything in the kernel is tracked and expires",
                report.not_fitting.len(),
                if report.not_fitting.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
        }
        self.inner.expiry_wake.notify_one();
        self.inner.snapshot_wake.notify_one();
        report
    }

    /// An alert about the sensor itself (not about a source address).
    fn system_alert(
        &self,
        class: &str,
        mitre: &str,
        evidence: serde_json::Map<String, serde_json::Value>,
    ) -> Alert {
        let now = Utc::now();
        Alert {
            id: format!(
                "{}-{}-{class}",
                self.inner.cfg.sensor_id,
                now.timestamp_millis()
            ),
            ts: now,
            sensor_id: self.inner.cfg.sensor_id.clone(),
            class: class.into(),
            src_ip: IpAddr::from([0u8; 4]),
            dst_ip: None,
            dst_port: None,
            risk: 50,
            confidence: 1.0,
            mitre: mitre.into(),
            action: "refused".into(),
            evidence,
            count: 1,
        }
    }
}

/// What [`Control::load`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Entries the kernel holds now: blocklist, allowlist.
    pub enforced: [usize; 2],
    /// Entries this sensor should enforce that did not fit in the kernel tables.
    pub not_fitting: Vec<(ListKind, IpNet)>,
}

fn table(dp: &Datapath, kind: ListKind) -> &dyn CidrOps {
    match kind {
        ListKind::Block => &dp.blocklist,
        ListKind::Allow => &dp.allowlist,
    }
}

fn table_mut(dp: &mut Datapath, kind: ListKind) -> &mut dyn CidrOps {
    match kind {
        ListKind::Block => &mut dp.blocklist,
        ListKind::Allow => &mut dp.allowlist,
    }
}

/// The value-independent part of a CIDR table, so the blocklist and allowlist share one code path.
trait CidrOps {
    fn contains(&self, net: &IpNet) -> bool;
    fn check_capacity(&self, nets: &[IpNet]) -> Result<(), DatapathError>;
    fn insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError>;
    fn remove(&mut self, net: IpNet) -> Result<bool, DatapathError>;
    fn nets(&self) -> Vec<IpNet>;
}

impl<V: aya::Pod + Default> CidrOps for crate::datapath::CidrTable<V> {
    fn contains(&self, net: &IpNet) -> bool {
        crate::datapath::CidrTable::contains(self, net)
    }
    fn insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError> {
        crate::datapath::CidrTable::insert_many(self, nets)
    }
    fn check_capacity(&self, nets: &[IpNet]) -> Result<(), DatapathError> {
        crate::datapath::CidrTable::check_capacity(self, nets)
    }
    fn remove(&mut self, net: IpNet) -> Result<bool, DatapathError> {
        crate::datapath::CidrTable::remove(self, net)
    }
    fn nets(&self) -> Vec<IpNet> {
        crate::datapath::CidrTable::nets(self).copied().collect()
    }
}

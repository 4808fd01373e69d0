//! Keeps writes through a backend outage (meant for Redis: the embedded store does not go away).
//!
//! While the backend is unreachable, or reachable but refusing writes (Redis out of memory, a
//! failed snapshot save stopping writes, an ACL or password change: [`StoreError::Rejected`]),
//! writes are queued in order (bounded) and a background task retries with exponential backoff,
//! replaying them when the backend accepts them again. A refused write is retried rather than
//! dropped because the caller has already enforced it in the kernel: the store only has to catch
//! up, and a full disk on the Redis host must not undo blocks on every sensor.
//!
//! There are two queues. List changes (blocklist and allowlist puts and removals) go in the first
//! and are replayed first; alerts, host events, counters, sensor and kv writes go in the second.
//! Each kind has its own cap ([`ResilientConfig`]), so a storm of alerts during an outage can fill
//! the alert cap but never take the room of a block. Order is kept within each queue; list
//! changes and the rest do not depend on each other's order.
//! Reads fail fast with [`StoreError::Unavailable`] meanwhile: the daemon keeps enforcing from its
//! kernel maps, which are the source of truth for the datapath. Once anything is queued, every
//! later write queues behind it, so the backend sees writes in the order they were made.
//!
//! Delivery is at least once: a write whose reply was lost (the server applied it, then the
//! connection dropped) is replayed. Entry, sensor and kv writes are idempotent; an alert may then
//! appear twice and a counter may over-count, which is preferable to losing a block.
//!
//! Host events ([`Store::record_events`]) are idempotent too: the replay goes through the same
//! atomic fingerprint check, so an event queued during an outage and also posted elsewhere is
//! stored once, and a replayed batch never doubles the history. While queued, the answer "new or
//! duplicate" comes from a bounded local memory of the fingerprints this process has seen
//! (recorded or answered) within their retention, so a batch retried during the outage is
//! acknowledged as duplicates here too. What the local memory cannot know is an event that only
//! *another* sensor recorded: during an outage this process may call it new (and count it for
//! its thresholds) although the stored history will still hold it once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::{Mutex, Notify};
use tokio::task::AbortHandle;

use crate::error::{Result, StoreError};
use crate::types::{
    self, Alert, AlertQuery, EventQuery, HostEventRecord, ListEntry, ListKind, Scope, Sensor,
};
use crate::{ChangeReceiver, Store};

mod queue;

use queue::{Applied, Fingerprints, Op, Queues, apply};
pub use queue::{QueuedWrite, WriteClass, describe, replay};

/// Queue sizes and retry pacing.
#[derive(Debug, Clone)]
pub struct ResilientConfig {
    /// Writes of each kind other than list changes (alerts, host-event batches, and the rest:
    /// counters, sensor and kv writes) kept while the backend is down; past this, writes of that
    /// kind fail with `QueueFull`.
    pub capacity: usize,
    /// List changes kept: the blocks the kernel already enforces. Larger, and never shared.
    pub list_capacity: usize,
    /// Wait after a write is queued before the first replay; doubled after each failed replay...
    pub min_backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
}

impl Default for ResilientConfig {
    fn default() -> Self {
        ResilientConfig {
            capacity: 10_000,
            list_capacity: 100_000,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

struct Shared<S> {
    inner: Arc<S>,
    config: ResilientConfig,
    /// The queue lock is also held while a write goes straight to the backend, which is what
    /// keeps writes in order between the direct path and the replay.
    queue: Mutex<Queues>,
    /// Mirror of the queue length, readable without the async lock (for metrics).
    queued: AtomicUsize,
    /// Mirror of the per-class counts, for metrics and `/health`.
    queued_by_class: [AtomicUsize; 4],
    /// Writes the backend refused (not unreachable) and that were queued for retry.
    refused: AtomicU64,
    /// Queued writes the backend rejected for a reason other than unavailability on replay.
    dropped: AtomicU64,
    wake: Notify,
    /// Backend and location from the last `Unavailable`, for the `QueueFull` message.
    last_down: SyncMutex<Option<(&'static str, String)>>,
    /// Counter totals as last known plus queued increments: what `incr_counter` answers while
    /// the real total cannot be read.
    counter_estimates: SyncMutex<HashMap<String, u64>>,
    /// Recently seen event fingerprints (see the module docs).
    fingerprints: SyncMutex<Fingerprints>,
}

impl<S: Store> Shared<S> {
    /// Replays the queue, list changes first. Stops at the first `Unavailable` or `Rejected`
    /// (the op stays at the front) and returns that error; returns `Ok` once the queue is empty.
    async fn drain(&self) -> Result<()> {
        let mut queue = self.queue.lock().await;
        while let Some(op) = queue.front() {
            match apply(&*self.inner, op).await {
                Ok(applied) => self.note_applied(op, &applied),
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    // Invalid or undecodable: retrying cannot fix it, and keeping it would block
                    // every write behind it forever. (Writes are validated before they queue.)
                    log::error!("dropping queued store write {op:?}: {e}");
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            queue.pop_front();
            self.note_len(&queue);
        }
        Ok(())
    }

    fn note_len(&self, queue: &Queues) {
        self.queued.store(queue.len(), Ordering::Relaxed);
        for (i, n) in queue.counts.iter().enumerate() {
            self.queued_by_class[i].store(*n, Ordering::Relaxed);
        }
    }

    fn note_applied(&self, op: &Op, applied: &Applied) {
        if let (Op::IncrCounter(name, _), Applied::Count(total)) = (op, applied) {
            let mut estimates = self
                .counter_estimates
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            estimates.insert(name.clone(), *total);
        }
    }

    /// Sends a write to the backend, or queues it behind earlier queued writes or when the
    /// backend is unavailable.
    async fn submit(&self, op: Op) -> Result<Applied> {
        let mut queue = self.queue.lock().await;
        let class = op.class();
        // Behind earlier writes of its own queue; list changes do not wait behind alerts.
        if queue.of(class).is_empty() {
            match apply(&*self.inner, &op).await {
                Ok(applied) => {
                    self.note_applied(&op, &applied);
                    return Ok(applied);
                }
                Err(StoreError::Unavailable {
                    backend, location, ..
                }) => {
                    if queue.is_empty() {
                        log::warn!("{backend} at {location} is unreachable: queueing writes");
                    }
                    let mut last = self.last_down.lock().unwrap_or_else(|e| e.into_inner());
                    *last = Some((backend, location));
                }
                Err(StoreError::Rejected {
                    backend,
                    location,
                    source,
                }) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    if queue.is_empty() {
                        log::warn!(
                            "{backend} at {location} refused a write ({source}): queueing writes and \
                             retrying until it accepts them"
                        );
                    }
                    let mut last = self.last_down.lock().unwrap_or_else(|e| e.into_inner());
                    *last = Some((backend, location));
                }
                Err(e) => return Err(e),
            }
        }
        let cap = match class {
            WriteClass::Lists => self.config.list_capacity,
            _ => self.config.capacity,
        };
        if queue.counts[class.index()] >= cap {
            let last = self.last_down.lock().unwrap_or_else(|e| e.into_inner());
            let (backend, location) = last.clone().unwrap_or(("store", "?".to_owned()));
            log::error!(
                "store write queue for {} is full: dropping a write",
                class.label()
            );
            return Err(StoreError::QueueFull {
                backend,
                location,
                capacity: cap,
            });
        }
        if let Op::IncrCounter(name, by) = &op {
            let mut estimates = self
                .counter_estimates
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let total = estimates.entry(name.clone()).or_default();
            *total = total.saturating_add(*by);
        }
        queue.push(op);
        self.note_len(&queue);
        self.wake.notify_one();
        Ok(Applied::Queued)
    }
}

/// Wraps a backend (normally [`crate::RedisStore`]) with an ordered, bounded write queue.
/// Must be created inside a tokio runtime (it spawns the retry task). Call [`Self::flush`] before
/// shutdown: queued writes are dropped with the store.
pub struct ResilientStore<S> {
    shared: Arc<Shared<S>>,
    retry_task: AbortHandle,
}

impl<S> Drop for ResilientStore<S> {
    fn drop(&mut self) {
        self.retry_task.abort();
    }
}

impl<S: Store + 'static> ResilientStore<S> {
    pub fn new(inner: Arc<S>, config: ResilientConfig) -> Self {
        let shared = Arc::new(Shared {
            inner,
            queue: Mutex::new(Queues::default()),
            queued: AtomicUsize::new(0),
            queued_by_class: Default::default(),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            wake: Notify::new(),
            last_down: SyncMutex::new(None),
            counter_estimates: SyncMutex::new(HashMap::new()),
            fingerprints: SyncMutex::new(Fingerprints::default()),
            config,
        });
        let task_shared = Arc::clone(&shared);
        let retry_task = tokio::spawn(async move {
            loop {
                task_shared.wake.notified().await;
                // A write is queued because the backend just failed it: wait before the first try
                // too. (Trying at once was also a race: on a busy machine that try could come after
                // the backend was back, however long the backoff.)
                let mut backoff = task_shared.config.min_backoff;
                loop {
                    tokio::time::sleep(backoff).await;
                    if task_shared.drain().await.is_ok() {
                        break;
                    }
                    backoff = (backoff * 2).min(task_shared.config.max_backoff);
                }
                log::info!("store write queue replayed; backend reachable again");
            }
        })
        .abort_handle();
        ResilientStore { shared, retry_task }
    }

    /// The wrapped backend, e.g. for `RedisStore::location`.
    pub fn inner(&self) -> &Arc<S> {
        &self.shared.inner
    }

    /// Writes waiting for the backend; export it as a gauge.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Queued writes per class, list changes first; for metrics and `/health`.
    pub fn queued_by_class(&self) -> [(WriteClass, usize); 4] {
        WriteClass::ALL.map(|c| {
            (
                c,
                self.shared.queued_by_class[c.index()].load(Ordering::Relaxed),
            )
        })
    }

    /// Writes the backend refused (OOM, MISCONF, NOPERM...) and that were queued for retry.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Queued writes dropped because they could never succeed (invalid); export as a counter.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Replays the queue now. `Ok` once everything queued has reached the backend, otherwise
    /// the `Unavailable` error that stopped it (the rest stays queued, in order).
    pub async fn flush(&self) -> Result<()> {
        self.shared.drain().await
    }

    /// Empties the queue and returns what was in it, in order: at shutdown, after
    /// [`Self::flush`] could not finish, so the caller can keep it (see [`replay`]).
    pub async fn take_queued(&self) -> Vec<QueuedWrite> {
        let mut queue = self.shared.queue.lock().await;
        let mut out = Vec::with_capacity(queue.len());
        while let Some(op) = queue.pop_front() {
            out.push(op);
        }
        self.shared.note_len(&queue);
        out
    }

    /// Reads must not see state older than our own queued writes: replay first, or fail.
    async fn ready(&self) -> Result<()> {
        if self.queued() > 0 {
            self.flush().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<S: Store + 'static> Store for ResilientStore<S> {
    async fn put_entries(&self, kind: ListKind, entries: &[ListEntry]) -> Result<()> {
        // Validate now: an invalid write found only at replay could no longer be reported.
        types::validate_entries(entries)?;
        self.shared
            .submit(Op::PutEntries(kind, entries.to_vec()))
            .await?;
        Ok(())
    }

    /// While queued, answers `true`: the removal is accepted and will be applied.
    async fn remove_entry(&self, kind: ListKind, cidr: &IpNet, scope: &Scope) -> Result<bool> {
        let op = Op::RemoveEntry(kind, *cidr, scope.clone());
        match self.shared.submit(op).await? {
            Applied::Bool(removed) => Ok(removed),
            _ => Ok(true),
        }
    }

    async fn list_entries(&self, kind: ListKind) -> Result<Vec<ListEntry>> {
        self.ready().await?;
        self.shared.inner.list_entries(kind).await
    }

    /// Not queued: it must return what it removed, which only the backend knows.
    async fn take_expired(&self, kind: ListKind, now: DateTime<Utc>) -> Result<Vec<ListEntry>> {
        self.ready().await?;
        self.shared.inner.take_expired(kind, now).await
    }

    async fn next_expiry(&self, kind: ListKind) -> Result<Option<DateTime<Utc>>> {
        self.ready().await?;
        self.shared.inner.next_expiry(kind).await
    }

    async fn append_alert(&self, alert: &Alert) -> Result<()> {
        self.shared
            .submit(Op::AppendAlert(Box::new(alert.clone())))
            .await?;
        Ok(())
    }

    async fn alerts(&self, query: AlertQuery) -> Result<Vec<Alert>> {
        self.ready().await?;
        self.shared.inner.alerts(query).await
    }

    /// While queued, answers from the local fingerprint memory (see the module docs); the replay
    /// still deduplicates in the backend, so the stored history never doubles.
    async fn record_events(
        &self,
        events: &[HostEventRecord],
        retention: Duration,
    ) -> Result<Vec<bool>> {
        types::validate_events(events)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let op = Op::RecordEvents(events.to_vec(), retention);
        let applied = self.shared.submit(op).await?;
        let now = Instant::now();
        let until = now.checked_add(retention).unwrap_or(now);
        let mut memory = self
            .shared
            .fingerprints
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let flags = match applied {
            Applied::Flags(flags) => flags,
            _ => events
                .iter()
                .map(|e| {
                    let new = !memory.is_live(&e.fingerprint, now);
                    if new {
                        memory.remember(&e.fingerprint, until);
                    }
                    new
                })
                .collect(),
        };
        for (event, new) in events.iter().zip(&flags) {
            if *new || !memory.is_live(&event.fingerprint, now) {
                memory.remember(&event.fingerprint, until);
            }
        }
        Ok(flags)
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<HostEventRecord>> {
        self.ready().await?;
        self.shared.inner.events(query).await
    }

    async fn put_sensor(&self, sensor: &Sensor) -> Result<()> {
        types::validate_sensor_id(&sensor.id)?;
        self.shared.submit(Op::PutSensor(sensor.clone())).await?;
        Ok(())
    }

    async fn list_sensors(&self) -> Result<Vec<Sensor>> {
        self.ready().await?;
        self.shared.inner.list_sensors().await
    }

    /// While queued, answers `true`, as `remove_entry` does.
    async fn remove_sensor(&self, id: &str) -> Result<bool> {
        match self.shared.submit(Op::RemoveSensor(id.to_owned())).await? {
            Applied::Bool(removed) => Ok(removed),
            _ => Ok(true),
        }
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.ready().await?;
        self.shared.inner.kv_get(key).await
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<()> {
        let op = Op::KvPut(key.to_owned(), value.to_vec());
        self.shared.submit(op).await?;
        Ok(())
    }

    /// While queued, answers the last known total plus queued increments (an estimate).
    async fn incr_counter(&self, name: &str, by: u64) -> Result<u64> {
        match self
            .shared
            .submit(Op::IncrCounter(name.to_owned(), by))
            .await?
        {
            Applied::Count(total) => Ok(total),
            _ => {
                let estimates = self
                    .shared
                    .counter_estimates
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                Ok(estimates.get(name).copied().unwrap_or(by))
            }
        }
    }

    async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        self.ready().await?;
        self.shared.inner.counters().await
    }

    /// Asks the backend itself, so `/health` shows an outage even while writes still queue.
    async fn ping(&self) -> Result<()> {
        self.shared.inner.ping().await
    }

    fn backend_name(&self) -> &'static str {
        self.shared.inner.backend_name()
    }

    fn queued_writes(&self) -> usize {
        self.queued()
    }

    fn take_malformed(&self) -> Vec<String> {
        self.shared.inner.take_malformed()
    }

    fn queued_by_class(&self) -> Vec<(WriteClass, usize)> {
        ResilientStore::queued_by_class(self).to_vec()
    }

    async fn flush(&self) -> Result<()> {
        ResilientStore::flush(self).await
    }

    async fn take_queued(&self) -> Vec<QueuedWrite> {
        ResilientStore::take_queued(self).await
    }

    async fn subscribe_changes(&self) -> Result<Option<ChangeReceiver>> {
        self.shared.inner.subscribe_changes().await
    }
}

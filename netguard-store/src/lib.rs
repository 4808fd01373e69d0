//! NetGuard's durable state: the one interface the daemon uses to keep blocklist and allowlist
//! entries, alert history, registered sensors, host events (deduplicated by fingerprint, see
//! [`Store::record_events`]), small key/value state and counters.
//!
//! Two backends implement [`Store`] and pass the same conformance suite (`tests/`):
//! - [`EmbeddedStore`]: redb on local disk, the default (`--state-dir`). Every write commits a
//!   crash-safe transaction before it returns.
//! - [`RedisStore`]: a shared Redis for fleets (`--redis URL`). Sensors sharing one Redis and key
//!   prefix share lists, alerts and the sensor registry; every entry change is also published on
//!   `<prefix>:changes` so that a global block made on one sensor reaches the others' kernels
//!   ([`Store::subscribe_changes`]). `kv_*` and counters are per sensor (namespaced by sensor id),
//!   since they hold host-local things such as the auth-log tailer's offset.
//!
//! [`ResilientStore`] wraps the Redis backend so that a Redis outage does not lose writes: they
//! queue in order and are replayed when Redis is back, while reads fail fast with
//! [`StoreError::Unavailable`] and the daemon keeps enforcing from its kernel maps.
//!
//! The daemon holds the store as `Arc<dyn Store>`; [`open`] builds the right one from options.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnet::IpNet;

pub mod deferred;
pub mod embedded;
pub mod error;
pub mod redis;
pub mod resilient;
pub mod types;
pub mod url;

// `self::` because `redis` alone would also name the redis crate.
pub use self::embedded::{EmbeddedConfig, EmbeddedStore};
pub use self::redis::{RedisConfig, RedisStore};
pub use self::resilient::{QueuedWrite, ResilientConfig, ResilientStore, WriteClass};
pub use error::{Result, StoreError};
pub use types::{
    Alert, AlertQuery, ChangeEvent, EntryChange, EntrySource, EventQuery, HostEventRecord,
    ListEntry, ListKind, Scope, Sensor,
};
pub use url::redact_url;

/// Default number of alerts kept; older ones are trimmed (DESIGN.md: history after a page reload).
pub const DEFAULT_ALERT_CAP: usize = 100_000;

/// Default number of host events kept in the event history ([`Store::events`]); older ones are
/// trimmed. Fingerprints used for deduplication are kept separately, for their retention window.
pub const DEFAULT_EVENT_CAP: usize = 100_000;

/// Default number of event fingerprints kept for deduplication. Past it, the fingerprints that
/// would expire soonest go first: a flood of distinct events shortens the dedup window instead of
/// growing the store without bound (about 130 bytes each in Redis, 170 MB at the default).
pub const DEFAULT_FINGERPRINT_CAP: usize = 1_000_000;

/// Receiver of entry changes made by other store instances (see [`Store::subscribe_changes`]).
pub type ChangeReceiver = tokio::sync::mpsc::Receiver<ChangeEvent>;

/// The daemon's durable state. Object safe, so the daemon can hold `Arc<dyn Store>` and pick the
/// backend at start-up. All methods are cancel-safe in the sense that a dropped future either
/// applied a whole write or none of it (each write is one transaction).
#[async_trait]
pub trait Store: Send + Sync {
    /// Upserts all entries atomically: either every entry is stored or none is. Entries are
    /// validated first ([`types::validate_entries`]) and replace any entry with the same
    /// (kind, cidr, scope).
    async fn put_entries(&self, kind: ListKind, entries: &[ListEntry]) -> Result<()>;

    /// Removes one entry; `Ok(false)` if there was none, so DELETE can be idempotent.
    async fn remove_entry(&self, kind: ListKind, cidr: &IpNet, scope: &Scope) -> Result<bool>;

    /// All live entries of a list, sorted by (cidr, scope). Never returns expired entries, even
    /// if [`Store::take_expired`] has not yet removed them.
    async fn list_entries(&self, kind: ListKind) -> Result<Vec<ListEntry>>;

    /// Removes and returns the entries expired at `now`, so the caller can remove them from the
    /// kernel. With several sensors on one Redis each expired entry is returned to exactly one.
    async fn take_expired(&self, kind: ListKind, now: DateTime<Utc>) -> Result<Vec<ListEntry>>;

    /// The earliest expiry in the list, so the daemon can sleep until then instead of polling.
    /// Millisecond resolution, rounded up: waking at this instant always finds the entry expired.
    async fn next_expiry(&self, kind: ListKind) -> Result<Option<DateTime<Utc>>>;

    /// Appends an alert to the capped history.
    async fn append_alert(&self, alert: &Alert) -> Result<()>;

    /// Alerts newest first, filtered, at most `query.limit` and never older than the cap.
    async fn alerts(&self, query: AlertQuery) -> Result<Vec<Alert>>;

    /// Stores each event whose fingerprint was not recorded within `retention`, atomically (two
    /// concurrent posts of one fingerprint store it once, also from two sensors sharing a Redis).
    /// One bool per input, in order: true = new (stored), false = duplicate (not stored again).
    /// A fingerprint repeated inside `events` is new once, then a duplicate. Events are
    /// validated first ([`types::validate_events`]); an invalid one fails the whole call.
    async fn record_events(
        &self,
        events: &[HostEventRecord],
        retention: Duration,
    ) -> Result<Vec<bool>>;

    /// Stored events, newest first (by received_at, i.e. insertion order), filtered and paged;
    /// the history is capped (oldest trimmed, see [`DEFAULT_EVENT_CAP`]).
    async fn events(&self, query: &EventQuery) -> Result<Vec<HostEventRecord>>;

    /// Registers or updates a sensor.
    async fn put_sensor(&self, sensor: &Sensor) -> Result<()>;

    /// All registered sensors, sorted by id.
    async fn list_sensors(&self) -> Result<Vec<Sensor>>;

    /// Forgets a sensor; `Ok(false)` if it was unknown.
    async fn remove_sensor(&self, id: &str) -> Result<bool>;

    /// Small opaque host-local state, such as the auth-log tailer's offset and inode.
    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// See [`Store::kv_get`]; durable once this returns.
    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<()>;

    /// Adds `by` to a named counter that survives restarts and returns the new total.
    async fn incr_counter(&self, name: &str, by: u64) -> Result<u64>;

    /// All counters of this sensor.
    async fn counters(&self) -> Result<BTreeMap<String, u64>>;

    /// Keys of stored entries that [`Store::list_entries`] skipped because they could not be read
    /// (a damaged or hand-edited record), since the last call; the caller alerts and counts them.
    fn take_malformed(&self) -> Vec<String> {
        Vec::new()
    }

    /// Cheap liveness check for `GET /health`.
    async fn ping(&self) -> Result<()>;

    /// "redis" or "embedded", for `/health`, logs and metrics labels.
    fn backend_name(&self) -> &'static str;

    /// Writes accepted but not yet in the backend (queued while it is unreachable). Only the
    /// resilient wrapper queues; every other store writes through.
    fn queued_writes(&self) -> usize {
        0
    }

    /// [`Store::queued_writes`] per kind (list changes, alerts, events, other). Empty for stores
    /// that do not queue.
    fn queued_by_class(&self) -> Vec<(resilient::WriteClass, usize)> {
        Vec::new()
    }

    /// Sends every queued write to the backend now; `Ok` once none is left (at once for stores
    /// that do not queue). Callers bound it with a timeout at shutdown.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Empties the write queue and returns it, in order, for the caller to keep elsewhere
    /// ([`resilient::replay`] applies it later). Empty for stores that do not queue.
    async fn take_queued(&self) -> Vec<QueuedWrite> {
        Vec::new()
    }

    /// Entry changes made by *other* store instances sharing the backend, or `None` when the
    /// backend is not shared (embedded). The receiver applies them to its kernel maps.
    async fn subscribe_changes(&self) -> Result<Option<ChangeReceiver>> {
        Ok(None)
    }
}

/// How the daemon chooses its store (`netguard run --redis URL --state-dir DIR --sensor-id ID`).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `Some` selects Redis; `None` the embedded store under `state_dir`.
    pub redis_url: Option<String>,
    /// PEM file of the CA that signed a `rediss://` server's certificate (a private CA); without
    /// it the system's roots are used.
    pub redis_ca: Option<PathBuf>,
    pub redis_prefix: String,
    pub state_dir: PathBuf,
    pub sensor_id: String,
    pub alert_cap: usize,
    /// Event fingerprints kept for deduplication (see [`DEFAULT_FINGERPRINT_CAP`]).
    pub fingerprint_cap: usize,
    /// Redis only: when Redis is unreachable at start, return a store that connects once it
    /// answers (reads fail with `Unavailable` until then, writes queue) instead of failing. For a
    /// daemon that has a local snapshot to enforce meanwhile; a first start still fails at once,
    /// so a wrong URL is reported. Wrong passwords and TLS problems always fail at once.
    pub start_unreachable: bool,
}

impl StoreOptions {
    pub fn new(state_dir: impl Into<PathBuf>, sensor_id: impl Into<String>) -> Self {
        StoreOptions {
            redis_url: None,
            redis_ca: None,
            redis_prefix: self::redis::DEFAULT_PREFIX.to_owned(),
            state_dir: state_dir.into(),
            sensor_id: sensor_id.into(),
            alert_cap: DEFAULT_ALERT_CAP,
            fingerprint_cap: DEFAULT_FINGERPRINT_CAP,
            start_unreachable: false,
        }
    }
}

/// Opens the store the options ask for: Redis wrapped in [`ResilientStore`] (so an outage after
/// start-up queues writes), or the embedded store. Redis must be reachable at start-up, so that a
/// wrong URL is reported at once instead of silently queueing forever.
pub async fn open(options: &StoreOptions) -> Result<Arc<dyn Store>> {
    match &options.redis_url {
        Some(url) => {
            let mut config = RedisConfig::new(url.clone(), options.sensor_id.clone());
            config.prefix.clone_from(&options.redis_prefix);
            config.alert_cap = options.alert_cap;
            config.fingerprint_cap = options.fingerprint_cap;
            config.ca.clone_from(&options.redis_ca);
            match RedisStore::connect(config.clone()).await {
                Ok(redis) => Ok(Arc::new(ResilientStore::new(
                    Arc::new(redis),
                    ResilientConfig::default(),
                ))),
                Err(e) if options.start_unreachable && self::redis::is_outage(&e) => {
                    log::warn!("{e}; starting without it and connecting when it answers");
                    Ok(Arc::new(ResilientStore::new(
                        Arc::new(deferred::DeferredRedis::new(config)),
                        ResilientConfig::default(),
                    )))
                }
                Err(e) => Err(e),
            }
        }
        None => {
            let mut config = EmbeddedConfig::new(options.state_dir.clone());
            config.alert_cap = options.alert_cap;
            config.fingerprint_cap = options.fingerprint_cap;
            Ok(Arc::new(EmbeddedStore::open(config).await?))
        }
    }
}

//! The default store: one redb file in the state dir. redb is copy-on-write and crash-safe, and
//! every write here commits with `Durability::Immediate` (fsync) before returning, so a block that
//! the API acknowledged survives a power cut. redb is blocking, so every call runs on tokio's
//! blocking pool instead of stalling the async workers that serve the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod events;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use crate::error::{Result, StoreError};
use crate::types::{
    self, Alert, AlertQuery, EventQuery, HostEventRecord, ListEntry, ListKind, Scope, Sensor,
    entry_id, expiry_index_ms, from_index_ms, now_index_ms,
};
use crate::{DEFAULT_ALERT_CAP, DEFAULT_EVENT_CAP, Store};

/// File name inside the state dir; one file holds everything so a backup is one copy.
pub const DB_FILE: &str = "netguard-store.redb";

// Entries are JSON values keyed by `ListEntry::id`, one table per list.
const ENTRIES_BLOCK: TableDefinition<&str, &[u8]> = TableDefinition::new("entries_block");
const ENTRIES_ALLOW: TableDefinition<&str, &[u8]> = TableDefinition::new("entries_allow");
// Expiry index keyed by (expiry ms, id): ordered, so the earliest expiry is the first key and
// `take_expired` reads only the expired prefix instead of every entry.
const EXPIRY_BLOCK: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry_block");
const EXPIRY_ALLOW: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry_allow");
// Alerts keyed by a sequence that only grows (kept in META), so order survives trimming and
// clock jumps; the oldest keys are trimmed once the cap is exceeded.
const ALERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("alerts");
const SENSORS: TableDefinition<&str, &[u8]> = TableDefinition::new("sensors");
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_ALERT_SEQ: &str = "alert_seq";
// Host events: the history keyed by a growing sequence (like alerts), and the dedup fingerprints
// with their expiry (ms), plus an expiry index so expired fingerprints are purged in key order.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const EVENT_FPS: TableDefinition<&str, i64> = TableDefinition::new("event_fps");
const EVENT_FP_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("event_fp_expiry");
const META_EVENT_SEQ: &str = "event_seq";
/// Expired fingerprints purged per `record_events` call, so one call never does unbounded work.
const FP_PURGE_BATCH: usize = 10_000;

fn entries_table(kind: ListKind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match kind {
        ListKind::Block => ENTRIES_BLOCK,
        ListKind::Allow => ENTRIES_ALLOW,
    }
}

fn expiry_table(kind: ListKind) -> TableDefinition<'static, (i64, &'static str), ()> {
    match kind {
        ListKind::Block => EXPIRY_BLOCK,
        ListKind::Allow => EXPIRY_ALLOW,
    }
}

/// Where and how big.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Created if missing; the database file is `state_dir/DB_FILE`.
    pub state_dir: PathBuf,
    pub alert_cap: usize,
    /// Host events kept in the history ([`Store::events`]).
    pub event_cap: usize,
    /// Event fingerprints kept for deduplication, soonest-expiring dropped first.
    pub fingerprint_cap: usize,
}

impl EmbeddedConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            state_dir: state_dir.into(),
            alert_cap: DEFAULT_ALERT_CAP,
            event_cap: DEFAULT_EVENT_CAP,
            fingerprint_cap: crate::DEFAULT_FINGERPRINT_CAP,
        }
    }
}

/// Errors inside a blocking closure: redb's several error types plus ours, so `?` works there;
/// the path is attached once at the boundary ([`EmbeddedStore::blocking`]).
enum Fail {
    Db(redb::Error),
    Store(StoreError),
}

macro_rules! fail_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Db(e.into())
            }
        }
    )*};
}
fail_from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

fn fail_to_store(path: &Path, fail: Fail) -> StoreError {
    match fail {
        Fail::Store(e) => e,
        Fail::Db(redb::Error::DatabaseAlreadyOpen) => StoreError::Locked {
            path: path.to_owned(),
        },
        Fail::Db(source) => StoreError::Embedded {
            path: path.to_owned(),
            source,
        },
    }
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, Fail> {
    serde_json::to_vec(value).map_err(|source| Fail::Store(StoreError::Serde { what, source }))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, key: &str, bytes: &[u8]) -> Result<T, Fail> {
    serde_json::from_slice(bytes).map_err(|e| {
        Fail::Store(StoreError::Corrupt {
            what: format!("{what} {key:?}"),
            detail: e.to_string(),
        })
    })
}

/// The embedded backend. Cheap to share: the database handle is behind an `Arc`.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    alert_cap: usize,
    event_cap: usize,
    fingerprint_cap: u64,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in the state dir and creates every table, so that reads
    /// never meet a missing table.
    pub async fn open(config: EmbeddedConfig) -> Result<Self> {
        let dir = config.state_dir.clone();
        let path = dir.join(DB_FILE);
        let open_path = path.clone();
        let db = tokio::task::spawn_blocking(move || -> Result<Database> {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                action: "create the state dir",
                path: dir.clone(),
                source,
            })?;
            let init = || -> Result<Database, Fail> {
                let db = Database::create(&open_path)?;
                let txn = db.begin_write()?;
                for kind in ListKind::ALL {
                    txn.open_table(entries_table(kind))?;
                    txn.open_table(expiry_table(kind))?;
                }
                txn.open_table(ALERTS)?;
                txn.open_table(SENSORS)?;
                txn.open_table(KV)?;
                txn.open_table(COUNTERS)?;
                txn.open_table(META)?;
                txn.open_table(EVENTS)?;
                txn.open_table(EVENT_FPS)?;
                txn.open_table(EVENT_FP_EXPIRY)?;
                txn.commit()?;
                Ok(db)
            };
            init().map_err(|f| fail_to_store(&open_path, f))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            path,
            alert_cap: config.alert_cap.max(1),
            event_cap: config.event_cap.max(1),
            fingerprint_cap: config.fingerprint_cap.max(1) as u64,
        })
    }

    /// The database file, for logs and backups.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs blocking redb work on the blocking pool and attaches the file path to any error.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fail> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&db).map_err(|e| fail_to_store(&path, e)))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one write transaction and commits it (durably) only if `f` succeeded; on error
    /// the transaction is dropped, which aborts it, so nothing of a failed write is visible.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, Fail> + Send + 'static,
    {
        self.blocking(move |db| {
            let txn = db.begin_write()?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        })
        .await
    }
}

/// Removes one entry (and its expiry index row) inside a write transaction; returns it if present.
fn remove_in(txn: &WriteTransaction, kind: ListKind, id: &str) -> Result<Option<ListEntry>, Fail> {
    let mut entries = txn.open_table(entries_table(kind))?;
    let old = match entries.remove(id)? {
        Some(bytes) => Some(decode::<ListEntry>("list entry", id, bytes.value())?),
        None => None,
    };
    if let Some(t) = old.as_ref().and_then(|e| e.expires_at) {
        txn.open_table(expiry_table(kind))?
            .remove((expiry_index_ms(t), id))?;
    }
    Ok(old)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn put_entries(&self, kind: ListKind, entries: &[ListEntry]) -> Result<()> {
        types::validate_entries(entries)?;
        // Key order makes the B-tree inserts sequential (a 100k bulk import is mostly new keys).
        let mut rows: Vec<(String, &ListEntry)> = entries.iter().map(|e| (e.id(), e)).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let rows: Vec<(String, Vec<u8>, Option<i64>)> = rows
            .into_iter()
            .map(|(id, e)| {
                let bytes = serde_json::to_vec(e).map_err(|source| StoreError::Serde {
                    what: "list entry",
                    source,
                })?;
                Ok((id, bytes, e.expires_at.map(expiry_index_ms)))
            })
            .collect::<Result<_>>()?;
        // One transaction for the whole batch: redb commits all of it or, on any error, none. Tables
        // are opened once per batch, and `insert` hands back the replaced row, whose expiry index
        // entry is then dropped: one tree operation per entry instead of remove + insert.
        self.write(move |txn| {
            let mut table = txn.open_table(entries_table(kind))?;
            let mut expiry = txn.open_table(expiry_table(kind))?;
            for (id, bytes, exp) in &rows {
                let old = table.insert(id.as_str(), bytes.as_slice())?;
                if let Some(old) = old {
                    let old: ListEntry = decode("list entry", id, old.value())?;
                    if let Some(t) = old.expires_at {
                        expiry.remove((expiry_index_ms(t), id.as_str()))?;
                    }
                }
                if let Some(ms) = exp {
                    expiry.insert((*ms, id.as_str()), ())?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn remove_entry(&self, kind: ListKind, cidr: &IpNet, scope: &Scope) -> Result<bool> {
        let id = entry_id(cidr, scope);
        self.write(move |txn| Ok(remove_in(txn, kind, &id)?.is_some()))
            .await
    }

    async fn list_entries(&self, kind: ListKind) -> Result<Vec<ListEntry>> {
        let now = Utc::now();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(entries_table(kind))?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (key, value) = row?;
                let entry: ListEntry = decode("list entry", key.value(), value.value())?;
                if !entry.is_expired(now) {
                    out.push(entry);
                }
            }
            out.sort_by(|a, b| (a.cidr, &a.scope).cmp(&(b.cidr, &b.scope)));
            Ok(out)
        })
        .await
    }

    async fn take_expired(&self, kind: ListKind, now: DateTime<Utc>) -> Result<Vec<ListEntry>> {
        let now_ms = now_index_ms(now);
        self.write(move |txn| {
            // Collect the expired prefix of the index first: the index table cannot be iterated
            // while `remove_in` modifies it.
            let mut expired_ids = Vec::new();
            {
                let index = txn.open_table(expiry_table(kind))?;
                for row in index.iter()? {
                    let (key, _) = row?;
                    let (ms, id) = key.value();
                    if ms > now_ms {
                        break;
                    }
                    expired_ids.push((ms, id.to_owned()));
                }
            }
            let mut out = Vec::with_capacity(expired_ids.len());
            for (ms, id) in expired_ids {
                match remove_in(txn, kind, &id)? {
                    Some(entry) => out.push(entry),
                    // An index row without an entry can only come from a damaged file; drop it
                    // so it cannot make the daemon wake up forever.
                    None => {
                        txn.open_table(expiry_table(kind))?
                            .remove((ms, id.as_str()))?;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn next_expiry(&self, kind: ListKind) -> Result<Option<DateTime<Utc>>> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let index = txn.open_table(expiry_table(kind))?;
            match index.first()? {
                Some((key, _)) => Ok(Some(from_index_ms(key.value().0)?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn append_alert(&self, alert: &Alert) -> Result<()> {
        let bytes = encode("alert", alert).map_err(|f| fail_to_store(&self.path, f))?;
        let cap = self.alert_cap as u64;
        self.write(move |txn| {
            let mut meta = txn.open_table(META)?;
            let seq = meta.get(META_ALERT_SEQ)?.map_or(0, |v| v.value()) + 1;
            meta.insert(META_ALERT_SEQ, seq)?;
            let mut alerts = txn.open_table(ALERTS)?;
            alerts.insert(seq, bytes.as_slice())?;
            // Trim in the same transaction so the file never holds more than the cap.
            let excess = alerts.len()?.saturating_sub(cap);
            for _ in 0..excess {
                alerts.pop_first()?;
            }
            Ok(())
        })
        .await
    }

    async fn alerts(&self, query: AlertQuery) -> Result<Vec<Alert>> {
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(ALERTS)?;
            let mut out = Vec::new();
            for row in table.iter()?.rev() {
                if out.len() >= query.limit {
                    break;
                }
                let (key, value) = row?;
                let alert: Alert = decode("alert", &key.value().to_string(), value.value())?;
                if query.matches(&alert) {
                    out.push(alert);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn record_events(
        &self,
        events: &[HostEventRecord],
        retention: Duration,
    ) -> Result<Vec<bool>> {
        types::validate_events(events)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|e| {
                let bytes = serde_json::to_vec(e).map_err(|source| StoreError::Serde {
                    what: "host event",
                    source,
                })?;
                Ok((e.fingerprint.clone(), bytes))
            })
            .collect::<Result<_>>()?;
        let now_ms = now_index_ms(Utc::now());
        let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let until_ms = now_ms.saturating_add(keep_ms);
        let cap = self.event_cap as u64;
        let fp_cap = self.fingerprint_cap;
        // One write transaction: redb serialises writers, so the check-then-insert per
        // fingerprint is atomic against concurrent calls, and the batch is all or nothing.
        let limits = events::Limits {
            now_ms,
            until_ms,
            history_cap: cap,
            fingerprint_cap: fp_cap,
        };
        self.write(move |txn| events::record_in(txn, &rows, &limits))
            .await
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<HostEventRecord>> {
        let query = query.clone();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            let mut skipped = 0;
            for row in table.iter()?.rev() {
                if query.is_full(out.len()) {
                    break;
                }
                let (key, value) = row?;
                let event: HostEventRecord =
                    decode("host event", &key.value().to_string(), value.value())?;
                if !query.matches(&event) {
                    continue;
                }
                if skipped < query.offset {
                    skipped += 1;
                } else {
                    out.push(event);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_sensor(&self, sensor: &Sensor) -> Result<()> {
        types::validate_sensor_id(&sensor.id)?;
        let bytes = encode("sensor", sensor).map_err(|f| fail_to_store(&self.path, f))?;
        let id = sensor.id.clone();
        self.write(move |txn| {
            txn.open_table(SENSORS)?
                .insert(id.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn list_sensors(&self) -> Result<Vec<Sensor>> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SENSORS)?;
            let mut out = Vec::new();
            // Keys iterate in byte order, which is the promised "sorted by id".
            for row in table.iter()? {
                let (key, value) = row?;
                out.push(decode("sensor", key.value(), value.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn remove_sensor(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write(move |txn| Ok(txn.open_table(SENSORS)?.remove(id.as_str())?.is_some()))
            .await
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(KV)?;
            Ok(table.get(key.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.write(move |txn| {
            txn.open_table(KV)?.insert(key.as_str(), value.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn incr_counter(&self, name: &str, by: u64) -> Result<u64> {
        let name = name.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(COUNTERS)?;
            let total = table
                .get(name.as_str())?
                .map_or(0, |v| v.value())
                .saturating_add(by);
            table.insert(name.as_str(), total)?;
            Ok(total)
        })
        .await
    }

    async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        self.blocking(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(COUNTERS)?;
            let mut out = BTreeMap::new();
            for row in table.iter()? {
                let (key, value) = row?;
                out.insert(key.value().to_owned(), value.value());
            }
            Ok(out)
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        // A read transaction proves the file is open and readable without writing anything.
        self.blocking(|db| {
            db.begin_read()?;
            Ok(())
        })
        .await
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}

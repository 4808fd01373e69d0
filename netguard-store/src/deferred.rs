//! A Redis store that was unreachable when the daemon started: it connects when Redis answers.
//!
//! Until then every call fails with [`StoreError::Unavailable`], so [`crate::ResilientStore`]
//! (which always wraps it) queues writes and the daemon enforces from its local snapshot. The
//! change feed it returns starts with [`ChangeEvent::Resubscribed`] once connected, which makes
//! the daemon re-read the lists: that is the reconcile after the outage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use tokio::sync::{Mutex, OnceCell};

use crate::error::{Result, StoreError};
use crate::redis::{RedisConfig, RedisStore};
use crate::types::{
    Alert, AlertQuery, ChangeEvent, EventQuery, HostEventRecord, ListEntry, ListKind, Scope, Sensor,
};
use crate::{ChangeReceiver, Store};

/// At most one connection attempt per this interval; calls in between fail at once.
const RETRY_EVERY: Duration = Duration::from_millis(500);

pub struct DeferredRedis {
    shared: Arc<Shared>,
}

struct Shared {
    config: RedisConfig,
    store: OnceCell<RedisStore>,
    /// When the last attempt failed, and why.
    last: Mutex<Option<(Instant, String)>>,
}

impl Shared {
    async fn get(&self) -> Result<&RedisStore> {
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        let mut last = self.last.lock().await;
        if let Some(s) = self.store.get() {
            return Ok(s);
        }
        if let Some((at, why)) = last.as_ref()
            && at.elapsed() < RETRY_EVERY
        {
            return Err(self.down(why.clone()));
        }
        match RedisStore::connect(self.config.clone()).await {
            Ok(s) => {
                log::info!(
                    "connected to {} (it was unreachable at start)",
                    s.location()
                );
                *last = None;
                Ok(self.store.get_or_init(|| async { s }).await)
            }
            Err(e) => {
                let why = e.to_string();
                *last = Some((Instant::now(), why.clone()));
                Err(e)
            }
        }
    }

    fn down(&self, why: String) -> StoreError {
        StoreError::Unavailable {
            backend: "redis",
            location: crate::redact_url(&self.config.url),
            hint: "it was unreachable at start; the daemon enforces its local snapshot and connects when it answers",
            source: why.into(),
        }
    }
}

impl DeferredRedis {
    pub fn new(config: RedisConfig) -> Self {
        DeferredRedis {
            shared: Arc::new(Shared {
                config,
                store: OnceCell::new(),
                last: Mutex::new(None),
            }),
        }
    }
}

#[async_trait]
impl Store for DeferredRedis {
    async fn put_entries(&self, kind: ListKind, entries: &[ListEntry]) -> Result<()> {
        self.shared.get().await?.put_entries(kind, entries).await
    }
    async fn remove_entry(&self, kind: ListKind, cidr: &IpNet, scope: &Scope) -> Result<bool> {
        self.shared
            .get()
            .await?
            .remove_entry(kind, cidr, scope)
            .await
    }
    async fn list_entries(&self, kind: ListKind) -> Result<Vec<ListEntry>> {
        self.shared.get().await?.list_entries(kind).await
    }
    async fn take_expired(&self, kind: ListKind, now: DateTime<Utc>) -> Result<Vec<ListEntry>> {
        self.shared.get().await?.take_expired(kind, now).await
    }
    async fn next_expiry(&self, kind: ListKind) -> Result<Option<DateTime<Utc>>> {
        self.shared.get().await?.next_expiry(kind).await
    }
    async fn append_alert(&self, alert: &Alert) -> Result<()> {
        self.shared.get().await?.append_alert(alert).await
    }
    async fn alerts(&self, query: AlertQuery) -> Result<Vec<Alert>> {
        self.shared.get().await?.alerts(query).await
    }
    async fn record_events(
        &self,
        events: &[HostEventRecord],
        retention: Duration,
    ) -> Result<Vec<bool>> {
        self.shared
            .get()
            .await?
            .record_events(events, retention)
            .await
    }
    async fn events(&self, query: &EventQuery) -> Result<Vec<HostEventRecord>> {
        self.shared.get().await?.events(query).await
    }
    async fn put_sensor(&self, sensor: &Sensor) -> Result<()> {
        self.shared.get().await?.put_sensor(sensor).await
    }
    async fn list_sensors(&self) -> Result<Vec<Sensor>> {
        self.shared.get().await?.list_sensors().await
    }
    async fn remove_sensor(&self, id: &str) -> Result<bool> {
        self.shared.get().await?.remove_sensor(id).await
    }
    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.shared.get().await?.kv_get(key).await
    }
    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.shared.get().await?.kv_put(key, value).await
    }
    async fn incr_counter(&self, name: &str, by: u64) -> Result<u64> {
        self.shared.get().await?.incr_counter(name, by).await
    }
    async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        self.shared.get().await?.counters().await
    }
    fn take_malformed(&self) -> Vec<String> {
        self.shared
            .store
            .get()
            .map(Store::take_malformed)
            .unwrap_or_default()
    }
    async fn ping(&self) -> Result<()> {
        self.shared.get().await?.ping().await
    }
    fn backend_name(&self) -> &'static str {
        "redis"
    }

    /// A feed at once; its first event, once Redis answers, is `Resubscribed` (re-read the lists).
    async fn subscribe_changes(&self) -> Result<Option<ChangeReceiver>> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let mut inner = loop {
                let sub = match shared.get().await {
                    Ok(s) => s.subscribe_changes().await,
                    Err(e) => Err(e),
                };
                match sub {
                    Ok(rx) => break rx,
                    Err(_) => {
                        tokio::select! {
                            () = tokio::time::sleep(RETRY_EVERY) => {}
                            () = tx.closed() => return,
                        }
                    }
                }
            };
            if tx.send(ChangeEvent::Resubscribed).await.is_err() {
                return;
            }
            while let Some(ev) = inner.recv().await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }
}

//! Redis backend, for fleets: many sensors share one Redis (and key prefix), so a global block made
//! on one reaches all. Layout under the prefix `P` (default "netguard"):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:entry:{kind}:{cidr}@{scope}` | hash | one entry's fields; `PEXPIREAT` = expiry + grace |
//! | `P:entries:{kind}` | set | ids of all entries, for listing |
//! | `P:expiry:{kind}` | sorted set | id scored by expiry ms, for `next_expiry`/`take_expired` |
//! | `P:alerts` | stream | alert JSON, `MAXLEN ~ cap` |
//! | `P:evfps` | zset | host events' dedup fingerprints, score = expiry (ms), capped |
//! | `P:events` | list | host event JSON, newest first, trimmed to the event cap |
//! | `P:sensors` | hash | sensor id to sensor JSON |
//! | `P:kv:{sensor}`, `P:counters:{sensor}` | hash | per-sensor state and counters |
//! | `P:changes` | Pub/Sub channel | JSON [`EntryChange`] for every put and removal |
//!
//! Writes that touch several keys run as one MULTI/EXEC transaction or one Lua script, so other
//! sensors never see half a bulk put. Single-node Redis only (the scripts compute key names).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};

mod alerts;
mod changes;
mod codec;
mod connect;
mod events;

use connect::{client, unavailable};

use crate::error::{Result, StoreError};
use crate::types::{
    self, Alert, AlertQuery, EntryChange, EventQuery, HostEventRecord, ListEntry, ListKind, Scope,
    Sensor, entry_id, expiry_index_ms, from_index_ms, now_index_ms,
};
use crate::{ChangeReceiver, DEFAULT_ALERT_CAP, DEFAULT_EVENT_CAP, Store};

pub const DEFAULT_PREFIX: &str = "netguard";
const BACKEND: &str = "redis";
const HINT: &str = "start redis-server or omit --redis to use the embedded store";
const AUTH_HINT: &str = "check the user and password in the Redis URL (NETGUARD_REDIS_URL, \
    --redis-url-file or [store] redis_url_file)";
const TLS_HINT: &str = "check that the server speaks TLS on that port (rediss://) and that its \
    certificate is signed by the CA in [store] redis_ca (--redis-ca) or the system's roots, for the \
    host name in the URL";
/// How many entries one pipeline reads, so a 100k-entry list does not become one huge reply.
const READ_BATCH: usize = 1000;

/// Connection and layout settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS). May carry a password: only ever show [`crate::redact_url`]
    /// of it.
    pub url: String,
    /// For `rediss://`: PEM file of the CA that signed the server's certificate; `None` = the
    /// system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// Key prefix; sensors of one fleet share it, separate fleets (or tests) use different ones.
    pub prefix: String,
    /// This sensor's id: namespaces kv and counters and is the `origin` of published changes.
    pub sensor_id: String,
    pub alert_cap: usize,
    /// Host events kept in the history list (`P:events`).
    pub event_cap: usize,
    /// Event fingerprints kept for deduplication (`P:evfps`), soonest-expiring dropped first.
    pub fingerprint_cap: usize,
    /// Entry hashes outlive their expiry by this much (`PEXPIREAT`), so `take_expired` can still
    /// return them to a daemon that wakes a little late, while Redis still cleans up entries
    /// that no sensor is left to expire. Such an entry is then gone without a change message;
    /// a daemon that starts later rebuilds its kernel maps from `list_entries`, which omits it.
    pub expire_grace: Duration,
    /// Bounds on connecting and on each reply, so an outage is reported in seconds, not minutes.
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>, sensor_id: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            ca: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            sensor_id: sensor_id.into(),
            alert_cap: DEFAULT_ALERT_CAP,
            event_cap: DEFAULT_EVENT_CAP,
            fingerprint_cap: crate::DEFAULT_FINGERPRINT_CAP,
            expire_grace: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

// Removal that publishes only if something was removed, atomically with the removal.
const REMOVE_LUA: &str = r"
local removed = redis.call('SREM', KEYS[2], ARGV[1])
local deleted = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if removed == 1 or deleted == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

// Claims every expired entry atomically, so with several sensors each expiry goes to exactly one.
const TAKE_EXPIRED_LUA: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[2] .. id
  local fields = redis.call('HGETALL', key)
  redis.call('DEL', key)
  redis.call('SREM', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
  out[#out + 1] = {id, fields}
end
return out
";

/// The Redis backend. Cloning the connection manager is cheap and it reconnects by itself.
pub struct RedisStore {
    client: Client,
    conn: ConnectionManager,
    config: RedisConfig,
    location: String,
    instance: String,
    remove_script: Script,
    take_script: Script,
    record_events_script: Script,
    /// Entries `list_entries` skipped as unreadable since the last [`Store::take_malformed`].
    malformed: std::sync::Mutex<Vec<String>>,
}

impl RedisStore {
    /// Connects and checks the server answers, so a wrong URL fails at start-up with advice.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let client = client(&config)?;
        // Only scheme, host and port: the URL may carry a password that must not reach logs.
        let scheme = if config.url.starts_with("rediss://") {
            "rediss"
        } else {
            "redis"
        };
        let location = format!("{scheme}://{}", client.get_connection_info().addr());
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            // Fail fast and let the caller (ResilientStore) decide how to wait: a request should
            // not hang on many reconnect attempts while the API waits for it.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let unavailable = |e: RedisError| unavailable(&location, e);
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(unavailable)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let store = RedisStore {
            client,
            conn,
            instance: format!("{}-{}-{nanos}", config.sensor_id, std::process::id()),
            config,
            location,
            remove_script: Script::new(REMOVE_LUA),
            take_script: Script::new(TAKE_EXPIRED_LUA),
            record_events_script: Script::new(events::RECORD_EVENTS_LUA),
            malformed: std::sync::Mutex::new(Vec::new()),
        };
        store.ping().await?;
        Ok(store)
    }

    /// `redis://host:port`, without credentials.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    fn entry_key(&self, kind: ListKind, id: &str) -> String {
        self.key(&["entry", kind.as_str(), id])
    }

    fn changes_channel(&self) -> String {
        self.key(&["changes"])
    }

    fn wire(&self, change: EntryChange) -> Result<String> {
        let wire = changes::Wire {
            instance: self.instance.clone(),
            change,
        };
        serde_json::to_string(&wire).map_err(|source| StoreError::Serde {
            what: "entry change",
            source,
        })
    }

    fn err(&self, e: RedisError) -> StoreError {
        if codec::is_unavailable(&e) {
            unavailable(&self.location, e)
        } else {
            StoreError::Rejected {
                backend: BACKEND,
                location: self.location.clone(),
                source: Box::new(e),
            }
        }
    }

    fn corrupt(&self, what: String, detail: impl ToString) -> StoreError {
        StoreError::Corrupt {
            what: format!(
                "{what} in {} (prefix {:?})",
                self.location, self.config.prefix
            ),
            detail: detail.to_string(),
        }
    }

    /// Rebuilds an entry from its hash; `None` for an empty hash (already gone).
    fn parse_entry(&self, key: &str, f: &HashMap<String, String>) -> Result<Option<ListEntry>> {
        codec::parse_entry(f).map_err(|detail| self.corrupt(format!("entry {key:?}"), detail))
    }

    /// Subscribes to `<prefix>:changes` and forwards changes made by other instances. The first
    /// subscription is made before returning, so no change published after this call is missed;
    /// afterwards a background task resubscribes with backoff after any disconnect and reports
    /// [`ChangeEvent::Resubscribed`](crate::ChangeEvent::Resubscribed) so the receiver can resynchronise.
    pub async fn subscribe_changes(&self) -> Result<ChangeReceiver> {
        let channel = self.changes_channel();
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| self.err(e))?;
        pubsub.subscribe(&channel).await.map_err(|e| self.err(e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (client, instance) = (self.client.clone(), self.instance.clone());
        tokio::spawn(changes::forward(client, pubsub, channel, instance, tx));
        Ok(rx)
    }
}

/// Whether `e` is Redis being down or unreachable (worth waiting for), rather than a wrong
/// password, a TLS problem or a bad URL (worth reporting at once).
pub(crate) fn is_outage(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable { hint, .. } if *hint == HINT)
}

#[async_trait]
impl Store for RedisStore {
    fn take_malformed(&self) -> Vec<String> {
        std::mem::take(&mut *self.malformed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn put_entries(&self, kind: ListKind, entries: &[ListEntry]) -> Result<()> {
        types::validate_entries(entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        let (index, expiry) = (
            self.key(&["entries", kind.as_str()]),
            self.key(&["expiry", kind.as_str()]),
        );
        let grace_ms = i64::try_from(self.config.expire_grace.as_millis()).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for entry in entries {
            let id = entry.id();
            let key = self.entry_key(kind, &id);
            // DEL first: a replaced entry must not keep an old reason or expiry field.
            pipe.del(&key).ignore();
            let fields = codec::entry_fields(entry);
            pipe.hset_multiple(&key, &fields).ignore();
            match entry.expires_at {
                Some(t) => {
                    let ms = expiry_index_ms(t);
                    pipe.cmd("PEXPIREAT")
                        .arg(&key)
                        .arg(ms.saturating_add(grace_ms))
                        .ignore();
                    pipe.zadd(&expiry, &id, ms).ignore();
                }
                None => {
                    pipe.zrem(&expiry, &id).ignore();
                }
            }
            pipe.sadd(&index, &id).ignore();
            let change = self.wire(EntryChange::Put {
                kind,
                entry: entry.clone(),
                origin: self.config.sensor_id.clone(),
            })?;
            // Inside MULTI, so the change is announced if and only if it was applied.
            pipe.publish(self.changes_channel(), change).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    async fn remove_entry(&self, kind: ListKind, cidr: &IpNet, scope: &Scope) -> Result<bool> {
        let id = entry_id(cidr, scope);
        let change = self.wire(EntryChange::Remove {
            kind,
            cidr: *cidr,
            scope: scope.clone(),
            expired: false,
            origin: self.config.sensor_id.clone(),
        })?;
        let mut conn = self.conn.clone();
        let removed: i64 = self
            .remove_script
            .key(self.entry_key(kind, &id))
            .key(self.key(&["entries", kind.as_str()]))
            .key(self.key(&["expiry", kind.as_str()]))
            .arg(&id)
            .arg(self.changes_channel())
            .arg(change)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(removed == 1)
    }

    async fn list_entries(&self, kind: ListKind) -> Result<Vec<ListEntry>> {
        let now = Utc::now();
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(&["entries", kind.as_str()]))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| self.entry_key(kind, id)).collect();
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.hgetall(key);
            }
            let hashes: Vec<HashMap<String, String>> =
                pipe.query_async(&mut conn).await.map_err(|e| self.err(e))?;
            for (key, fields) in keys.iter().zip(&hashes) {
                // An empty hash was removed between SMEMBERS and HGETALL, or outlived its grace.
                // One damaged entry (hand-edited, another program on the prefix) must not keep
                // every other block out of the kernel: skip it and report it.
                match self.parse_entry(key, fields) {
                    Ok(Some(entry)) if !entry.is_expired(now) => out.push(entry),
                    Ok(_) => {}
                    Err(e) => {
                        log::warn!("skipping a malformed entry: {e}");
                        let mut bad = self.malformed.lock().unwrap_or_else(|e| e.into_inner());
                        bad.push(key.clone());
                    }
                }
            }
        }
        out.sort_by(|a, b| (a.cidr, &a.scope).cmp(&(b.cidr, &b.scope)));
        Ok(out)
    }

    async fn take_expired(&self, kind: ListKind, now: DateTime<Utc>) -> Result<Vec<ListEntry>> {
        let mut conn = self.conn.clone();
        let taken: Vec<(String, HashMap<String, String>)> = self
            .take_script
            .key(self.key(&["expiry", kind.as_str()]))
            .key(self.key(&["entries", kind.as_str()]))
            .arg(now_index_ms(now))
            .arg(self.entry_key(kind, ""))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(taken.len());
        let mut pipe = redis::pipe();
        for (id, fields) in &taken {
            if let Some(entry) = self.parse_entry(&self.entry_key(kind, id), fields)? {
                let change = self.wire(EntryChange::Remove {
                    kind,
                    cidr: entry.cidr,
                    scope: entry.scope.clone(),
                    expired: true,
                    origin: self.config.sensor_id.clone(),
                })?;
                pipe.publish(self.changes_channel(), change).ignore();
                out.push(entry);
            }
        }
        if !out.is_empty() {
            // The entries are already removed; a failed announcement only delays other sensors
            // until their own expiry timers fire, so it is logged rather than returned.
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                log::warn!("could not announce {} expired entries: {e}", out.len());
            }
        }
        Ok(out)
    }

    async fn next_expiry(&self, kind: ListKind) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.conn.clone();
        let first: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.key(&["expiry", kind.as_str()]))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        // Scores are whole milliseconds well below 2^53, so the f64 round trip is exact.
        first
            .first()
            .map(|(_, score)| from_index_ms(*score as i64))
            .transpose()
    }

    async fn append_alert(&self, alert: &Alert) -> Result<()> {
        self.xadd_alert(alert).await
    }

    async fn alerts(&self, query: AlertQuery) -> Result<Vec<Alert>> {
        self.read_alerts(query).await
    }

    async fn record_events(
        &self,
        events: &[HostEventRecord],
        retention: Duration,
    ) -> Result<Vec<bool>> {
        types::validate_events(events)?;
        self.record_events_impl(events, retention).await
    }

    async fn events(&self, query: &EventQuery) -> Result<Vec<HostEventRecord>> {
        self.read_events(query).await
    }

    async fn put_sensor(&self, sensor: &Sensor) -> Result<()> {
        types::validate_sensor_id(&sensor.id)?;
        let json = serde_json::to_string(sensor).map_err(|source| StoreError::Serde {
            what: "sensor",
            source,
        })?;
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.key(&["sensors"]))
            .arg(&sensor.id)
            .arg(json)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    async fn list_sensors(&self) -> Result<Vec<Sensor>> {
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(&["sensors"]))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        all.iter()
            .map(|(id, json)| {
                serde_json::from_str(json).map_err(|e| self.corrupt(format!("sensor {id:?}"), e))
            })
            .collect()
    }

    async fn remove_sensor(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn.clone();
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.key(&["sensors"]))
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(removed == 1)
    }

    async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        redis::cmd("HGET")
            .arg(self.key(&["kv", &self.config.sensor_id]))
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.key(&["kv", &self.config.sensor_id]))
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }

    async fn incr_counter(&self, name: &str, by: u64) -> Result<u64> {
        // HINCRBY works on signed 64-bit integers.
        let by = i64::try_from(by).map_err(|_| StoreError::Invalid {
            field: "counter increment",
            detail: format!("{by} is larger than the Redis limit {}", i64::MAX),
        })?;
        let mut conn = self.conn.clone();
        let total: i64 = redis::cmd("HINCRBY")
            .arg(self.key(&["counters", &self.config.sensor_id]))
            .arg(name)
            .arg(by)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        u64::try_from(total).map_err(|_| self.corrupt(format!("counter {name:?}"), total))
    }

    async fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let mut conn = self.conn.clone();
        let all: BTreeMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.key(&["counters", &self.config.sensor_id]))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        all.into_iter()
            .map(|(name, v)| match u64::try_from(v) {
                Ok(v) => Ok((name, v)),
                Err(_) => Err(self.corrupt(format!("counter {name:?}"), v)),
            })
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    async fn subscribe_changes(&self) -> Result<Option<ChangeReceiver>> {
        Ok(Some(RedisStore::subscribe_changes(self).await?))
    }
}

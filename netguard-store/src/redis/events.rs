//! Host events in Redis: exactly-once by fingerprint, and a capped history.
//!
//! The fingerprints are one sorted set `P:evfps`, scored by expiry (ms, Redis's clock): whoever
//! adds one first owns the event, so two sensors (or two concurrent requests) posting the same
//! event store it once. Each call first drops the expired fingerprints and, past the cap, the ones
//! that would expire soonest, so a flood of distinct events cannot grow Redis without bound (one
//! key per event did, for the whole retention window). The check and the history append run in
//! one Lua script, so an event is in the history if and only if its fingerprint was new. The
//! history is a list `P:events` (newest at the head) trimmed to the cap.

use super::{READ_BATCH, RedisStore};
use crate::error::{Result, StoreError};
use crate::types::{EventQuery, HostEventRecord};

/// Events per script call: each call is atomic per fingerprint anyway, and smaller calls keep
/// Redis responsive to other clients during a 10,000-event post.
const RECORD_BATCH: usize = 1000;

// KEYS[1] history list, KEYS[2] fingerprint zset; ARGV[1] retention ms, ARGV[2] history cap,
// ARGV[3] fingerprint cap, then (fingerprint, json) pairs. Returns 1 (new) or 0 (duplicate) per
// pair. TIME is allowed: scripts replicate their effects (Redis 7).
pub(super) const RECORD_EVENTS_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local expiry = now + tonumber(ARGV[1])
local out = {}
local added = 0
for i = 4, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    out[#out + 1] = 0
  else
    redis.call('ZADD', KEYS[2], expiry, ARGV[i])
    redis.call('LPUSH', KEYS[1], ARGV[i + 1])
    added = added + 1
    out[#out + 1] = 1
  end
end
if added > 0 then
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
  if excess > 0 then
    redis.call('ZPOPMIN', KEYS[2], excess)
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return out
";

impl RedisStore {
    pub(super) async fn record_events_impl(
        &self,
        events: &[HostEventRecord],
        retention: std::time::Duration,
    ) -> Result<Vec<bool>> {
        // PX needs a positive time; a zero retention therefore still dedups for 1 ms.
        let retention_ms = retention.as_millis().clamp(1, i64::MAX as u128);
        let history = self.key(&["events"]);
        let fingerprints = self.key(&["evfps"]);
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(events.len());
        for chunk in events.chunks(RECORD_BATCH) {
            let mut invocation = self.record_events_script.key(&history);
            invocation
                .key(&fingerprints)
                .arg(retention_ms as u64)
                .arg(self.config.event_cap.max(1))
                .arg(self.config.fingerprint_cap.max(1));
            for event in chunk {
                let json = serde_json::to_string(event).map_err(|source| StoreError::Serde {
                    what: "host event",
                    source,
                })?;
                invocation.arg(&event.fingerprint).arg(json);
            }
            let flags: Vec<i64> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            if flags.len() != chunk.len() {
                return Err(self.corrupt(
                    "record_events reply".into(),
                    format!("{} flags for {} events", flags.len(), chunk.len()),
                ));
            }
            out.extend(flags.into_iter().map(|f| f == 1));
        }
        Ok(out)
    }

    pub(super) async fn read_events(&self, query: &EventQuery) -> Result<Vec<HostEventRecord>> {
        let key = self.key(&["events"]);
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let mut skipped = 0usize;
        let mut start = 0usize;
        let cap = self.config.event_cap.max(1);
        while !query.is_full(out.len()) && start < cap {
            let stop = (start + READ_BATCH).min(cap) - 1;
            let page: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(start)
                .arg(stop)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            for (i, json) in page.iter().enumerate() {
                let event: HostEventRecord = serde_json::from_str(json)
                    .map_err(|e| self.corrupt(format!("host event #{}", start + i), e))?;
                if !query.matches(&event) || query.is_full(out.len()) {
                    continue;
                }
                if skipped < query.offset {
                    skipped += 1;
                } else {
                    out.push(event);
                }
            }
            if page.len() < stop + 1 - start {
                break;
            }
            start = stop + 1;
        }
        Ok(out)
    }
}

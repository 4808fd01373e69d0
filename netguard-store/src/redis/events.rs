//! Host events in Redis: exactly-once by fingerprint, and a capped history.
//!
//! Each fingerprint is a key `P:evfp:{fingerprint}` set with `SET NX PX retention`: whoever sets it
//! first owns the event, so two sensors (or two concurrent requests) posting the same event store
//! it once, and the key disappears by itself when the retention window ends. The check and the
//! history append run in one Lua script, so an event is in the history if and only if its
//! fingerprint was new. The history is a list `P:events` (newest at the head) trimmed to the cap.

use super::{READ_BATCH, RedisStore};
use crate::error::{Result, StoreError};
use crate::types::{EventQuery, HostEventRecord};

/// Events per script call: each call is atomic per fingerprint anyway, and smaller calls keep
/// Redis responsive to other clients during a 10,000-event post.
const RECORD_BATCH: usize = 1000;

// KEYS[1] history list; ARGV[1] fingerprint key prefix, ARGV[2] retention ms, ARGV[3] cap,
// then (fingerprint, json) pairs. Returns 1 (new) or 0 (duplicate) per pair.
pub(super) const RECORD_EVENTS_LUA: &str = r"
local out = {}
local added = 0
for i = 4, #ARGV, 2 do
  if redis.call('SET', ARGV[1] .. ARGV[i], '1', 'NX', 'PX', ARGV[2]) then
    redis.call('LPUSH', KEYS[1], ARGV[i + 1])
    added = added + 1
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if added > 0 then
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]) - 1)
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
        let fp_prefix = self.key(&["evfp", ""]);
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(events.len());
        for chunk in events.chunks(RECORD_BATCH) {
            let mut invocation = self.record_events_script.key(&history);
            invocation
                .arg(&fp_prefix)
                .arg(retention_ms as u64)
                .arg(self.config.event_cap.max(1));
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

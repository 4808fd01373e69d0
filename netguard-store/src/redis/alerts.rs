//! Alert history in a Redis Stream: appends are O(1), the stream keeps insertion order, and
//! `MAXLEN ~` bounds memory without a separate trimming job. Needs Redis 6.2+ (exclusive ranges).

use std::collections::HashMap;

use super::{READ_BATCH, RedisStore};
use crate::error::{Result, StoreError};
use crate::types::{Alert, AlertQuery};

impl RedisStore {
    pub(super) async fn xadd_alert(&self, alert: &Alert) -> Result<()> {
        let json = serde_json::to_string(alert).map_err(|source| StoreError::Serde {
            what: "alert",
            source,
        })?;
        let mut conn = self.conn.clone();
        // Approximate trimming (~) lets Redis drop whole stream nodes, which is much cheaper; the
        // exact cap is applied when reading.
        redis::cmd("XADD")
            .arg(self.key(&["alerts"]))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.alert_cap)
            .arg("*")
            .arg("json")
            .arg(json)
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(super) async fn read_alerts(&self, query: AlertQuery) -> Result<Vec<Alert>> {
        let mut conn = self.conn.clone();
        let key = self.key(&["alerts"]);
        let mut out = Vec::new();
        let mut scanned = 0usize;
        let mut end = "+".to_owned();
        // Page backwards through the stream; never look past the newest `alert_cap` alerts, so
        // the approximate trim does not show more history than the embedded store would.
        while out.len() < query.limit && scanned < self.config.alert_cap {
            let count = READ_BATCH.min(self.config.alert_cap - scanned);
            let page: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.err(e))?;
            for (id, fields) in &page {
                let json = fields.get("json").ok_or_else(|| {
                    self.corrupt(format!("alert {id}"), "field \"json\" is missing")
                })?;
                let alert: Alert = serde_json::from_str(json)
                    .map_err(|e| self.corrupt(format!("alert {id}"), e))?;
                if query.matches(&alert) && out.len() < query.limit {
                    out.push(alert);
                }
            }
            scanned += page.len();
            match page.last() {
                // "(" makes the range exclusive, so the next page starts after this one.
                Some((id, _)) if page.len() == count => end = format!("({id}"),
                _ => break,
            }
        }
        Ok(out)
    }
}

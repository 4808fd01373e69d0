//! Alerts from blocklist hits: the kernel reports a blocked source at most once per entry per second;
//! here each source gets at most one alert per cooldown, with the number of reports folded into
//! `count`.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use chrono::Utc;
use netguard_store::{Alert, ListEntry};

/// Sources remembered at most; beyond this the oldest are forgotten (a spoofed flood must not grow
/// memory without bound).
const MAX_TRACKED: usize = 65_536;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique, sortable alert id: sensor, milliseconds, sequence.
pub fn alert_id(sensor: &str) -> String {
    format!(
        "{sensor}-{}-{}",
        Utc::now().timestamp_millis(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct HitAlerts {
    cooldown: Duration,
    last: HashMap<IpAddr, (Instant, u32)>,
}

impl HitAlerts {
    pub fn new(cooldown: Duration) -> Self {
        Self {
            cooldown,
            last: HashMap::new(),
        }
    }

    /// An alert for this report, or None while the source is in its cooldown.
    pub fn alert(
        &mut self,
        sensor: &str,
        entry: &ListEntry,
        src: IpAddr,
        dst: IpAddr,
        dst_port: u16,
        proto: u8,
    ) -> Option<Alert> {
        let now = Instant::now();
        if let Some((at, suppressed)) = self.last.get_mut(&src)
            && now.duration_since(*at) < self.cooldown
        {
            *suppressed += 1;
            return None;
        }
        if self.last.len() >= MAX_TRACKED {
            let cooldown = self.cooldown;
            self.last
                .retain(|_, (at, _)| now.duration_since(*at) < cooldown);
            if self.last.len() >= MAX_TRACKED {
                self.last.clear();
            }
        }
        let suppressed = self.last.insert(src, (now, 0)).map_or(0, |(_, n)| n);
        let mut evidence = serde_json::Map::new();
        evidence.insert("entry".into(), entry.cidr.to_string().into());
        evidence.insert("entry_scope".into(), entry.scope.to_string().into());
        evidence.insert(
            "entry_source".into(),
            serde_json::to_value(entry.source).unwrap_or_default(),
        );
        evidence.insert("proto".into(), proto.into());
        if let Some(r) = &entry.reason {
            evidence.insert("entry_reason".into(), r.clone().into());
        }
        Some(Alert {
            id: alert_id(sensor),
            ts: Utc::now(),
            sensor_id: sensor.to_string(),
            class: "blocklist_hit".into(),
            src_ip: src,
            dst_ip: Some(dst),
            dst_port: (dst_port != 0).then_some(dst_port),
            risk: 50,
            confidence: 1.0,
            // Traffic from a blocked source; no ATT&CK technique is implied by the hit itself.
            mitre: String::new(),
            action: "blocked".into(),
            evidence,
            count: 1 + suppressed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_per_source_and_count() {
        let mut h = HitAlerts::new(Duration::from_millis(50));
        let e = ListEntry::new(
            "10.0.0.0/24".parse().unwrap(),
            netguard_store::Scope::Global,
        );
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let d: IpAddr = "10.9.9.9".parse().unwrap();
        assert!(h.alert("s", &e, a, d, 22, 6).is_some());
        assert!(h.alert("s", &e, a, d, 22, 6).is_none());
        assert!(h.alert("s", &e, a, d, 22, 6).is_none());
        assert!(
            h.alert("s", &e, b, d, 22, 6).is_some(),
            "another source has its own cooldown"
        );
        std::thread::sleep(Duration::from_millis(60));
        let again = h.alert("s", &e, a, d, 22, 6).unwrap();
        assert_eq!(again.count, 3, "two suppressed reports are folded in");
        assert_eq!(again.class, "blocklist_hit");
        assert_eq!(again.evidence["entry"], "10.0.0.0/24");
    }
}

//! Caps on automatic blocks (sources `auto` and `event`): a rate per minute, and a share of each
//! blocklist table that they can never use, so that a flood or scan from random sources can neither
//! fill the table nor churn it, and manual and feed blocks always fit.
//!
//! Hitting a cap refuses the block. One alert says so per episode (an episode ends after
//! `alert_quiet` without refusals), not one per source: a random-source scan would otherwise turn
//! into an alert storm. `netguard_response_capped_total{cap}` counts every refusal.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use chrono::Utc;
use ipnet::IpNet;
use netguard_store::{Alert, ListEntry};
use serde::{Deserialize, Serialize};

use super::ControlError;

/// `[control.auto_caps]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AutoCaps {
    /// Automatic blocks allowed per minute (a token bucket: up to this many at once, refilled
    /// evenly over the minute). 0 refuses every automatic block.
    pub per_minute: u32,
    /// Share of each blocklist table (v4, v6) that automatic blocks may never use.
    pub reserved_share: f64,
    /// A cap episode ends, and the next refusal raises a new alert, after this long without one.
    #[serde(with = "crate::detect::duration_str")]
    pub alert_quiet: Duration,
}

impl Default for AutoCaps {
    fn default() -> Self {
        Self {
            per_minute: 60,
            reserved_share: 0.25,
            alert_quiet: Duration::from_secs(600),
        }
    }
}

impl AutoCaps {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.reserved_share) {
            return Err(format!(
                "control.auto_caps.reserved_share = {} must be at least 0 and below 1",
                self.reserved_share
            ));
        }
        Ok(())
    }

    /// Entries of a table of `max` that automatic blocks may fill: the rest is reserved.
    pub fn usable(&self, max: u32) -> usize {
        let reserved = (f64::from(max) * self.reserved_share).ceil() as usize;
        (max as usize).saturating_sub(reserved.max(1))
    }
}

/// Which cap refused a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    Rate,
    Reserve,
}

impl Cap {
    pub fn label(self) -> &'static str {
        match self {
            Cap::Rate => "rate",
            Cap::Reserve => "reserve",
        }
    }
}

/// The state of the caps: the rate bucket and the current episode.
pub(super) struct CapState {
    cfg: AutoCaps,
    tokens: f64,
    refilled: Instant,
    last_refusal: Option<Instant>,
}

impl CapState {
    pub fn new(cfg: AutoCaps) -> Self {
        Self {
            tokens: f64::from(cfg.per_minute),
            cfg,
            refilled: Instant::now(),
            last_refusal: None,
        }
    }

    pub fn cfg(&self) -> &AutoCaps {
        &self.cfg
    }

    /// Takes one block from the rate bucket, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let per_sec = f64::from(self.cfg.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(self.cfg.per_minute));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records a refusal; true when it starts a new episode (and so deserves the one alert).
    pub fn refused(&mut self, now: Instant) -> bool {
        let new = self
            .last_refusal
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.alert_quiet);
        self.last_refusal = Some(now);
        new
    }
}

/// `netguard_response_capped_total{cap}`, with both labels present from the start. The daemon
/// registers the control plane's instance in its registry.
pub fn capped_counter() -> prometheus::IntCounterVec {
    let c = prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "netguard_response_capped_total",
            "Automatic blocks refused by a cap, by cap (rate: blocks per minute; reserve: blocklist capacity kept for people and feeds).",
        ),
        &["cap"],
    )
    .expect("valid counter vec");
    for cap in [Cap::Rate, Cap::Reserve] {
        c.with_label_values(&[cap.label()]);
    }
    c
}

/// A refused automatic block, for the caller's alert.
#[derive(Clone, Debug)]
pub struct Capped {
    pub cap: Cap,
    pub cidr: IpNet,
    pub detail: String,
}

/// The unspecified address of the family of `net`: the cap alert's source (it is about many).
pub fn nobody(net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(_) => IpAddr::from([0u8; 4]),
        IpNet::V6(_) => IpAddr::from([0u16; 8]),
    }
}

impl super::Control {
    /// Automatic blocks: within the rate and outside the reserved capacity, or refused; the first
    /// refusal of an episode raises the one cap alert.
    pub(super) async fn check_caps(
        &self,
        entries: &[(usize, ListEntry)],
    ) -> Result<(), ControlError> {
        let Some((_, first)) = entries.first() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        let refusal = {
            let fill = self.dp().blocklist.fill();
            let mut caps = self.inner.caps.lock().expect("caps lock poisoned");
            let family = usize::from(first.cidr.addr().is_ipv6());
            let (held, max) = fill[family];
            let usable = caps.cfg().usable(max);
            if held + entries.len() > usable {
                Some((Cap::Reserve, format!("the blocklist holds {held} of {max} entries and automatic blocks may use {usable}; the rest is kept for manual and feed blocks")))
            } else if !caps.take(now) {
                Some((Cap::Rate, format!("more than {} automatic blocks in a minute (control.auto_caps.per_minute)", caps.cfg().per_minute)))
            } else {
                None
            }
            .map(|(cap, detail)| (cap, detail, caps.refused(now)))
        };
        let Some((cap, detail, new_episode)) = refusal else {
            return Ok(());
        };
        self.inner
            .capped_total
            .with_label_values(&[cap.label()])
            .inc();
        if new_episode {
            log::warn!("automatic blocks capped ({}): {detail}", cap.label());
            self.raise_alert(self.cap_alert(cap, first, &detail)).await;
        }
        Err(ControlError::Capped(Capped {
            cap,
            cidr: first.cidr,
            detail,
        }))
    }

    fn cap_alert(&self, cap: Cap, first: &ListEntry, detail: &str) -> Alert {
        let class = first
            .reason
            .as_deref()
            .and_then(|r| {
                r.split([':', ' '])
                    .find(|w| crate::detect::RULE_CLASSES.contains(w))
            })
            .unwrap_or("port_scan");
        let mut evidence = serde_json::Map::new();
        evidence.insert("cap".into(), cap.label().into());
        evidence.insert("detail".into(), detail.into());
        evidence.insert("first_refused".into(), first.cidr.to_string().into());
        evidence.insert(
            "note".into(),
            "one alert per cap episode; netguard_response_capped_total counts every refused block"
                .into(),
        );
        let now = Utc::now();
        Alert {
            id: format!(
                "{}-{}-cap",
                self.inner.cfg.sensor_id,
                now.timestamp_millis()
            ),
            ts: now,
            sensor_id: self.inner.cfg.sensor_id.clone(),
            class: class.into(),
            src_ip: nobody(&first.cidr),
            dst_ip: None,
            dst_port: None,
            risk: 50,
            confidence: 1.0,
            mitre: crate::detect::mitre(class).into(),
            action: "refused".into(),
            evidence,
            count: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_bucket_refills_over_the_minute() {
        let t0 = Instant::now();
        let mut s = CapState::new(AutoCaps {
            per_minute: 3,
            ..AutoCaps::default()
        });
        assert!(s.take(t0) && s.take(t0) && s.take(t0));
        assert!(!s.take(t0), "a fourth within the minute is refused");
        assert!(!s.take(t0 + Duration::from_secs(10)), "a third of a token");
        assert!(s.take(t0 + Duration::from_secs(21)), "one token after 20 s");
    }

    #[test]
    fn one_alert_per_episode() {
        let t0 = Instant::now();
        let mut s = CapState::new(AutoCaps::default());
        assert!(s.refused(t0));
        assert!(!s.refused(t0 + Duration::from_secs(1)));
        assert!(
            !s.refused(t0 + Duration::from_secs(500)),
            "still the same episode"
        );
        assert!(
            s.refused(t0 + Duration::from_secs(1200)),
            "after 10 quiet minutes, a new one"
        );
    }

    #[test]
    fn the_reserve_is_never_usable() {
        let c = AutoCaps::default();
        assert_eq!(c.usable(1000), 750);
        assert_eq!(c.usable(1), 0, "at least one entry is always reserved");
        assert!(
            AutoCaps {
                reserved_share: 1.0,
                ..c.clone()
            }
            .validate()
            .is_err()
        );
    }
}

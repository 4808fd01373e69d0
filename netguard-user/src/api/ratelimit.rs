//! The per-token rate limit of `POST /api/v1/events` (`[api.events_rate_limit]`): a token bucket per
//! token name, so one leaked or runaway agent token cannot flood the store and the tracker, and
//! agents behind one NAT address do not share a budget.
//!
//! Written here rather than taken from a crate: the keys are the configured token names (only a
//! request that authenticated reaches the limiter), so the map is bounded by the config and needs
//! no eviction, and the answer needs the exact wait for `Retry-After`.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// `[api.events_rate_limit]`: requests per second per token, with a burst.
///
/// The defaults (10 requests/s, burst 20) never bother a real agent, which batches its events and
/// posts every few seconds (a batch holds up to `[events] max_batch` events), and stop a loop that
/// posts one event per request as fast as it can.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsRateLimit {
    /// Sustained requests per second per token (fractions allowed: 0.5 = one every 2 s).
    pub per_second: f64,
    /// Requests a token may make at once after being idle.
    pub burst: u32,
}

impl Default for EventsRateLimit {
    fn default() -> Self {
        Self {
            per_second: 10.0,
            burst: 20,
        }
    }
}

impl EventsRateLimit {
    /// The first invalid field (`per_second` or `burst`) and what to do about it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err((
                "per_second",
                format!(
                    "{} is not a rate; use a positive number of requests per second, e.g. 10",
                    self.per_second
                ),
            ));
        }
        if self.burst == 0 {
            return Err((
                "burst",
                "must be at least 1 (a burst of 0 refuses every request)".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key (the token's name).
#[derive(Debug)]
pub struct Limiter {
    cfg: EventsRateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(cfg: EventsRateLimit) -> Self {
        Self {
            cfg,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &EventsRateLimit {
        &self.cfg
    }

    /// Takes one request from `key`'s bucket at `now`; when it is empty, how long until it holds
    /// one again.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let rate = self.cfg.per_second.max(f64::MIN_POSITIVE);
        let burst = f64::from(self.cfg.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// `Retry-After` in whole seconds: the wait rounded up, at least 1 (0 would invite a retry loop).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_key() {
        let l = Limiter::new(EventsRateLimit {
            per_second: 2.0,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", t0).is_ok());
        }
        let wait = l.check("a", t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 0.5).abs() < 1e-6,
            "one request per 0.5 s: {wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        // Another token has its own bucket.
        assert!(l.check("b", t0).is_ok());
        // Half a second later one more is allowed, and no more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check("a", t1).is_ok());
        assert!(l.check("a", t1).is_err());
        // Idle for long: back to the burst, not beyond it.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.check("a", t2).is_ok());
        }
        assert!(l.check("a", t2).is_err());
    }

    #[test]
    fn slow_rates_give_whole_seconds_to_wait() {
        let l = Limiter::new(EventsRateLimit {
            per_second: 0.25,
            burst: 1,
        });
        let t0 = Instant::now();
        assert!(l.check("a", t0).is_ok());
        assert_eq!(retry_after_secs(l.check("a", t0).unwrap_err()), 4);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_named() {
        assert!(EventsRateLimit::default().validate().is_ok());
        for (per_second, burst, field) in [
            (0.0, 20, "per_second"),
            (-1.0, 20, "per_second"),
            (f64::NAN, 20, "per_second"),
            (10.0, 0, "burst"),
        ] {
            let e = EventsRateLimit { per_second, burst }
                .validate()
                .unwrap_err();
            assert_eq!(e.0, field);
        }
    }
}

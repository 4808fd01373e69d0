//! Unit tests of the pure parts: normalisation and fingerprints, the tracker, the local mapping.

mod local;
mod normalize;
mod tracker;

use std::{net::IpAddr, time::Duration};

use chrono::{DateTime, TimeZone as _, Utc};
use serde_json::json;

use super::config::{OnSuccess, Rule, RuleOverride, Thresholds};
use super::normalize::{Poster, event_type, fingerprint, normalize, parse_ts};
use super::tracker::{Escalation, Failure, RuleKind, Tracker, escalated};
use crate::hostevents::{HostEvent, HostEventKind};

pub(super) fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_714_560_000 + secs, 0).unwrap()
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn agent(vm: &str) -> Poster {
    Poster {
        default_vm: Some(vm.into()),
        bound_vm: None,
    }
}

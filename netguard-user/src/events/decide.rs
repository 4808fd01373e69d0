//! A tripped threshold becomes a block (through the same control-plane path as REST, source
//! "event") and an alert (stored and pushed on the WebSocket by `Control::raise_alert`).

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use netguard_store::{Alert, EntrySource, ListKind, Scope};
use serde::Serialize;

use super::Events;
use super::tracker::{RuleKind, Trip};
use crate::control::{ControlError, EntryRequest};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// What was done about one tripped threshold (part of `POST /api/v1/events`' answer).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct BlockOutcome {
    /// The source, as a /32 or /128.
    #[schema(example = "203.0.113.7/32")]
    pub cidr: String,
    /// "global" or the VM id the block is scoped to.
    pub scope: String,
    /// `events.global` or `events.per_vm`.
    pub rule: String,
    pub failures: u32,
    pub max_retry: u32,
    #[schema(example = "10m")]
    pub find_time: String,
    /// How long the block lasts (escalated for repeat offences).
    #[schema(example = "1h")]
    pub ttl: String,
    pub offence: u32,
    /// `ssh_brute_force` or `brute_force`.
    pub class: String,
    /// "blocked", "refused" (a never-block address, or a cap: see `crate::trust`), or "alerted" (dry
    /// run, or the block was refused otherwise, e.g. allowlisted).
    pub action: String,
    pub alert_id: String,
    /// Why no block was made, when `action` is "alerted".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// `ssh_brute_force` when every counted failure was against SSH, else `brute_force`.
pub fn class_of(services: &[String]) -> &'static str {
    if !services.is_empty() && services.iter().all(|s| s == "ssh") {
        "ssh_brute_force"
    } else {
        "brute_force"
    }
}

/// Risk 0-100 of a tripped threshold: 60 for a per-VM rule, 70 for the global one (the source is
/// attacking several VMs or many times), +10 per repeat offence, +20 when the source also logged
/// in successfully (a brute force that may have worked), capped at 100.
fn risk(trip: &Trip) -> u8 {
    let base: u32 = match trip.rule {
        RuleKind::Global => 70,
        RuleKind::PerVm(_) => 60,
    };
    let repeat = 10 * trip.offence.saturating_sub(1).min(3);
    let success = if trip.successes.is_empty() { 0 } else { 20 };
    (base + repeat + success).min(100) as u8
}

fn fmt_duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Events {
    /// Blocks and alerts for each trip, in order. The kernel is updated inside `Control::put`
    /// before anything else here touches the store.
    pub(super) async fn apply(&self, trips: Vec<Trip>) -> Vec<BlockOutcome> {
        let mut out = Vec::with_capacity(trips.len());
        for trip in trips {
            out.push(self.apply_one(trip).await);
        }
        out
    }

    async fn apply_one(&self, trip: Trip) -> BlockOutcome {
        let inner = &self.inner;
        let class = class_of(&trip.services);
        let scope = match &trip.rule {
            RuleKind::Global => Scope::Global,
            RuleKind::PerVm(vm) => Scope::Sensor(vm.clone()),
        };
        let cidr = ipnet::IpNet::from(trip.ip);
        let ttl = fmt_duration(trip.ban_time);
        let find_time = fmt_duration(trip.find_time);
        let req = EntryRequest {
            cidr: cidr.to_string(),
            ttl: Some(ttl.clone()),
            reason: Some(format!(
                "event: {class} ({} failures in {find_time}, {}{}, offence {})",
                trip.failures,
                trip.rule.name(),
                match &trip.rule {
                    RuleKind::Global => String::new(),
                    RuleKind::PerVm(vm) => format!(" on {vm}"),
                },
                trip.offence
            )),
            scope: Some(scope.to_string()),
            force: false,
        };
        // Why no block was made (None: blocked), and whether the refusal was the trust rules' (an
        // address never blocked, or a cap), which the alert reports as "refused".
        let (refused, trust_refusal, capped) = if inner.dry_run {
            (
                Some("dry run: alert only (--dry-run or detect.response.dry_run)".to_owned()),
                false,
                false,
            )
        } else {
            match inner
                .control
                .put(ListKind::Block, &[req], EntrySource::Event)
                .await
            {
                Ok(_) => {
                    inner.metrics.host_events().block(scope == Scope::Global);
                    (None, false, false)
                }
                Err(e) => {
                    let trust =
                        matches!(e, ControlError::NeverBlock { .. } | ControlError::Capped(_));
                    let capped = matches!(e, ControlError::Capped(_));
                    // Refused as REST would refuse it (an allowlisted source): the alert says so.
                    if !matches!(e, ControlError::Invalid(_)) && !trust {
                        log::warn!("event block of {cidr} failed: {e}");
                    }
                    let text = match e {
                        ControlError::Invalid(errs) => errs
                            .iter()
                            .map(|f| f.error.clone())
                            .collect::<Vec<_>>()
                            .join("; "),
                        other => other.to_string(),
                    };
                    (Some(text), trust, capped)
                }
            }
        };
        let now = Utc::now();
        let action = match (&refused, trust_refusal) {
            (None, _) => "blocked",
            (Some(_), true) => "refused",
            (Some(_), false) => "alerted",
        };
        let mut evidence = serde_json::Map::new();
        evidence.insert("rule".into(), trip.rule.name().into());
        evidence.insert("failures".into(), trip.failures.into());
        evidence.insert("max_retry".into(), trip.max_retry.into());
        evidence.insert("find_time".into(), find_time.clone().into());
        evidence.insert(
            "window".into(),
            serde_json::json!({ "first": trip.first, "last": trip.last }),
        );
        evidence.insert("vm_ids".into(), trip.vms.clone().into());
        evidence.insert("usernames".into(), trip.users.clone().into());
        evidence.insert("services".into(), trip.services.clone().into());
        evidence.insert("scope".into(), scope.to_string().into());
        evidence.insert("ttl".into(), ttl.clone().into());
        evidence.insert("offence".into(), trip.offence.into());
        if trip.also_per_vm {
            evidence.insert("per_vm_also_reached".into(), true.into());
        }
        if !trip.successes.is_empty() {
            let s: Vec<_> = trip
                .successes
                .iter()
                .map(|s| serde_json::json!({ "ts": s.ts, "vm_id": s.vm, "username": s.user }))
                .collect();
            evidence.insert("successful_logins".into(), s.into());
        }
        if inner.dry_run {
            evidence.insert("dry_run".into(), true.into());
        }
        if let Some(r) = &refused
            && !inner.dry_run
        {
            evidence.insert("block_refused".into(), r.clone().into());
        }
        let alert = Alert {
            id: format!(
                "{}-{}-e{}",
                inner.control.sensor_id(),
                now.timestamp_millis(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            ts: now,
            sensor_id: inner.control.sensor_id().to_owned(),
            class: class.into(),
            src_ip: trip.ip,
            dst_ip: None,
            dst_port: None,
            risk: risk(&trip),
            confidence: 1.0,
            mitre: crate::detect::mitre(class).into(),
            action: action.into(),
            evidence,
            count: 1,
        };
        let alert_id = alert.id.clone();
        log::info!(
            "{class} from {}: {} failures in {find_time} ({}, scope {scope}): {action}",
            trip.ip,
            trip.failures,
            trip.rule.name()
        );
        // A cap refusal is announced once per episode by the control plane, not once per source.
        if !capped {
            inner.control.raise_alert(alert).await;
        }
        BlockOutcome {
            cidr: cidr.to_string(),
            scope: scope.to_string(),
            rule: trip.rule.name().into(),
            failures: trip.failures,
            max_retry: trip.max_retry,
            find_time,
            ttl,
            offence: trip.offence,
            class: class.into(),
            action: action.into(),
            alert_id,
            refused,
        }
    }
}

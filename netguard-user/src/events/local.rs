//! The fast path for this sensor's own sshd log: every line the follower hands on goes straight into
//! the tracker (source_vm_id = this sensor, marked as the sensor's own evidence, which alone may
//! corroborate a global block) and, when it reaches a threshold, into `Control::put`,
//! which writes the kernel map; only then is the event written to the store.
//!
//! What counts, so that "N failures" means what a fail2ban user means (one per failed password):
//! - `FailedPassword` ("Failed password|keyboard-interactive/pam for [invalid user] X ...") counts
//!   one failure per guessed password, and is stored as `ssh_failed`;
//! - `Accepted` is stored as `ssh_accepted` and annotates or resets (`[events] on_success`);
//! - `PamFailure` repeats a `FailedPassword` when `UsePAM yes`, and `InvalidUser`, `ClosedPreauth`
//!   and `TooManyFailures` come once per connection around the attempts already counted: they are
//!   not counted and not stored (they still feed the detector's failed-login features, as before).
//!
//! Exactly once without a store round trip: the fingerprint is the agents' one (time, IP, user,
//! port) and is checked against an in-memory set, preloaded at start with the fingerprints of this
//! sensor's events received within the longest find time, so a replay of the same lines after an
//! offset reset (or a restart) is not counted twice. Syslog times have one-second resolution and
//! one SSH connection keeps its port, so two genuine attempts can share every fingerprinted field:
//! the k-th identical line within a run gets [`repeat_fingerprint`]`(base, k)`, and a replay, read in
//! the same order, recomputes the same k. Lines without their own time (`sshd -E`) are stamped on
//! arrival, so a replay of those is not recognised by fingerprint: the saved offset is what
//! prevents it. Older lines than the find time cannot count anyway (the tracker ignores them).

use std::collections::{HashMap, VecDeque};
use std::sync::PoisonError;
use std::time::Duration;

use chrono::{DateTime, Utc};
use netguard_store::{EventQuery, HostEventRecord};
use tokio::sync::mpsc;

use super::Events;
use super::normalize::{self, fingerprint, repeat_fingerprint};
use crate::hostevents::{HostEvent, HostEventKind};
use crate::metrics::{EventResult, EventSource};

/// Events taken from the follower's channel in one go (they are counted one by one; the batch
/// only shares the store write).
const BATCH: usize = 1024;

/// Fingerprints of this sensor's recent events, and how often each identical line was seen in
/// this run. Entries expire after `keep`; bounded by expiry and by [`MAX_REMEMBERED`].
#[derive(Default)]
pub(super) struct LocalDedup {
    seen: HashMap<String, DateTime<Utc>>,
    repeats: HashMap<String, (u32, DateTime<Utc>)>,
    order: VecDeque<(DateTime<Utc>, String)>,
}

const MAX_REMEMBERED: usize = 200_000;

impl LocalDedup {
    fn prune(&mut self, now: DateTime<Utc>) {
        while let Some((until, fp)) = self.order.front() {
            if *until > now && self.order.len() <= MAX_REMEMBERED {
                break;
            }
            if self.seen.get(fp) == Some(until) {
                self.seen.remove(fp);
            }
            if self.repeats.get(fp).is_some_and(|(_, t)| t == until) {
                self.repeats.remove(fp);
            }
            self.order.pop_front();
        }
    }

    /// The fingerprint of the next occurrence of `base` in this run.
    fn occurrence(&mut self, base: &str, until: DateTime<Utc>) -> String {
        let slot = self.repeats.entry(base.to_owned()).or_insert((0, until));
        let k = slot.0;
        *slot = (k.saturating_add(1), until);
        self.order.push_back((until, base.to_owned()));
        repeat_fingerprint(base, k)
    }

    /// True if `fp` is new (and remembers it until `until`).
    fn insert(&mut self, fp: &str, until: DateTime<Utc>) -> bool {
        if self.seen.get(fp).is_some_and(|t| *t > Utc::now()) {
            return false;
        }
        self.seen.insert(fp.to_owned(), until);
        self.order.push_back((until, fp.to_owned()));
        true
    }
}

/// A local sshd event as a stored record (before the repeat numbering), or `None` for the kinds
/// that are not counted (see the module docs).
pub fn local_record(
    ev: &HostEvent,
    vm: &str,
    received_at: DateTime<Utc>,
) -> Option<HostEventRecord> {
    let (event_type, failure) = match ev.kind {
        HostEventKind::FailedPassword => ("ssh_failed", true),
        HostEventKind::Accepted => ("ssh_accepted", false),
        HostEventKind::InvalidUser
        | HostEventKind::ClosedPreauth
        | HostEventKind::PamFailure
        | HostEventKind::TooManyFailures => return None,
    };
    let ts = normalize::to_millis(ev.ts);
    let user = ev
        .user
        .clone()
        .filter(|u| !u.is_empty() && u.len() <= normalize::MAX_USERNAME);
    Some(HostEventRecord {
        fingerprint: fingerprint(ts, ev.src_ip, user.as_deref(), ev.src_port, vm, event_type),
        ts,
        received_at,
        src_ip: ev.src_ip.to_canonical(),
        username: user,
        src_port: ev.src_port,
        event_type: event_type.into(),
        service: ev.service.clone(),
        failure,
        source_vm_id: vm.to_owned(),
    })
}

/// What one local batch did (for tests and the bench).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalReport {
    pub accepted: usize,
    pub duplicates: usize,
    /// Lines that are not counted (PAM, invalid user, connection-level lines).
    pub ignored: usize,
    pub blocks: usize,
}

impl Events {
    /// How long local fingerprints are remembered in memory: the longest find time (older events
    /// cannot count) plus a minute of slack.
    fn local_keep(&self) -> chrono::Duration {
        let longest = self.thresholds().longest_find_time() + Duration::from_secs(60);
        chrono::Duration::from_std(longest).unwrap_or(chrono::Duration::MAX)
    }

    /// Loads the fingerprints of this sensor's events received within the longest find time, so a
    /// replay after a restart is recognised. A store that cannot answer only costs that protection.
    pub async fn preload_local(&self) -> usize {
        let now = Utc::now();
        let keep = self.local_keep();
        let query = EventQuery {
            vm_id: Some(self.sensor_id().to_owned()),
            since: now.checked_sub_signed(keep),
            ..EventQuery::default()
        };
        match self.inner.control.store().events(&query).await {
            Ok(events) => {
                let mut dedup = self
                    .inner
                    .local
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for e in &events {
                    dedup.insert(&e.fingerprint, now + keep);
                }
                events.len()
            }
            Err(e) => {
                log::warn!(
                    "could not preload recent auth-log fingerprints ({e}); a replayed log may be counted twice"
                );
                0
            }
        }
    }

    /// Counts again the failed logins stored within the longest find time (every VM's, oldest first),
    /// so that a restart does not reset a brute force half-way: the attempt that reaches the threshold
    /// after the restart still blocks. A threshold reached during this replay acts on nothing: it was
    /// acted on before the restart, and its block was restored from the store with the others. Returns
    /// how many events were replayed; a store that cannot answer only costs the old counts.
    pub async fn restore_counts(&self) -> usize {
        let now = Utc::now();
        let query = EventQuery {
            since: now.checked_sub_signed(self.local_keep()),
            ..EventQuery::default()
        };
        match self.inner.control.store().events(&query).await {
            Ok(mut events) => {
                events.sort_by_key(|e| (e.ts, e.received_at));
                let refs: Vec<&HostEventRecord> = events.iter().collect();
                // Replayed as agents' events: the store does not say which were read from this
                // sensor's own log, so they corroborate a global block only by their VMs (the next
                // live own-log failure still does).
                let replayed_trips = self.count(&refs, false).len();
                log::debug!(
                    "replayed {} stored host event(s) ({replayed_trips} old threshold(s) reached again, not acted on)",
                    refs.len()
                );
                refs.len()
            }
            Err(e) => {
                log::warn!(
                    "could not restore failed-login counts from the store ({e}); counting starts from zero"
                );
                0
            }
        }
    }

    /// Counts local sshd events at once and acts on thresholds, then stores the new ones.
    pub async fn on_local(&self, batch: &[HostEvent]) -> LocalReport {
        let now = Utc::now();
        let received_at = normalize::to_millis(now);
        let keep = self.local_keep();
        let until = now + keep;
        let mut report = LocalReport::default();
        let mut fresh = Vec::new();
        {
            let mut dedup = self
                .inner
                .local
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            dedup.prune(now);
            for ev in batch {
                let Some(mut rec) = local_record(ev, self.sensor_id(), received_at) else {
                    report.ignored += 1;
                    continue;
                };
                rec.fingerprint = dedup.occurrence(&rec.fingerprint, until);
                if dedup.insert(&rec.fingerprint, until) {
                    fresh.push(rec);
                } else {
                    report.duplicates += 1;
                }
            }
        }
        report.accepted = fresh.len();
        let refs: Vec<&HostEventRecord> = fresh.iter().collect();
        let trips = self.count(&refs, true);
        // Kernel first (inside Control::put), store afterwards.
        let decisions = self.apply(trips).await;
        report.blocks = decisions.iter().filter(|d| d.action == "blocked").count();
        if !fresh.is_empty() {
            let retention = self.config().retention;
            if let Err(e) = self
                .inner
                .control
                .store()
                .record_events(&fresh, retention)
                .await
            {
                log::warn!("{} auth-log event(s) not stored: {e}", fresh.len());
            }
        }
        let m = self.inner.metrics.host_events();
        m.events(
            EventSource::Authlog,
            EventResult::Accepted,
            report.accepted as u64,
        );
        m.events(
            EventSource::Authlog,
            EventResult::Duplicate,
            report.duplicates as u64,
        );
        report
    }

    /// The daemon's auth-log consumer: preloads, then takes whatever the follower has sent,
    /// counts it at once and hands every event on to `forward` (the detector's failed-login
    /// features). Ends when the follower's channel closes.
    pub async fn follow_authlog(
        self,
        rx: mpsc::Receiver<HostEvent>,
        forward: Option<mpsc::Sender<HostEvent>>,
    ) {
        self.follow_authlog_counted(rx, forward, None).await;
    }

    /// [`Events::follow_authlog`], reporting each batch to the tailer once it is counted (and its
    /// store write made or queued), so the tailer saves its position only past counted lines
    /// (`hostevents::spawn_authlog_counted`).
    pub async fn follow_authlog_counted(
        self,
        mut rx: mpsc::Receiver<HostEvent>,
        forward: Option<mpsc::Sender<HostEvent>>,
        counted: Option<crate::hostevents::Counted>,
    ) {
        let preloaded = self.preload_local().await;
        log::debug!("preloaded {preloaded} recent auth-log fingerprint(s)");
        let mut dropped = 0u64;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            self.on_local(&batch).await;
            if let Some(counted) = &counted {
                counted.add(batch.len());
            }
            if let Some(tx) = &forward {
                for ev in batch {
                    // Never wait for the detector's tick: a full queue costs feature accuracy only.
                    if tx.try_send(ev).is_err() {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            log::warn!(
                                "detector queue full: {dropped} auth-log event(s) not fed to the failed-login features"
                            );
                        }
                    }
                }
            }
        }
    }
}

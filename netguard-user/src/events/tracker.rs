//! The immediate threshold engine: counts failed logins per source IP across all VMs (global rule)
//! and per (IP, VM) (per-VM rule) in sliding windows, and trips a rule on exactly the failure that
//! reaches its `max_retry`, not at a later tick. Pure and synchronous: it returns [`Trip`]s and the
//! caller blocks and alerts.
//!
//! Window semantics (fail2ban's findtime): failures are placed by their own time `ts`; a rule trips
//! when `max_retry` failures lie within `find_time` of the newest one. A failure older than
//! `find_time` before now is stale and never counted (an agent's late batch or a replayed log cannot
//! trip a rule on old news); one stamped in the future counts as now. Only the newest `max_retry`
//! failures of a key are kept, which is all a later check can need, so memory per key is bounded.
//!
//! Who may cause a global block: failures one agent reports can only be as true as that agent, and
//! an agent token speaks for one VM, so the global rule trips only on corroborated evidence: its
//! `max_retry` failures within `find_time` must include failures reported for at least two distinct
//! VMs, or at least one failure this sensor read in its own sshd log (`Failure::own`, set only by the
//! auth-log follower's path, never from a VM id, so an agent whose `vm_id` is this sensor's id
//! cannot pass for the sensor). Failures from one VM alone reach at most the per-VM rule, which
//! blocks on that VM only. Enough to know this is kept per source whatever `max_retry` cuts: the
//! newest failure time of the two VMs seen last and of the own log ([`Witnesses`]).
//!
//! After a trip the key's window is cleared and the key is held for the ban time: failures keep
//! being noted but cannot trip it again until the block has run out, so one attack is one block and
//! one alert. A global trip also holds the source's per-VM keys (the global block covers them); when
//! both rules trip on the same failure only the global one is reported.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};

use super::config::{OnSuccess, Rule, Thresholds};

/// Which rule tripped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Global,
    /// The per-VM rule of this VM.
    PerVm(String),
}

impl RuleKind {
    /// The config section that names the rule, for alert evidence.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Global => "events.global",
            RuleKind::PerVm(_) => "events.per_vm",
        }
    }
}

/// One failed login as the tracker sees it.
#[derive(Clone, Debug)]
pub struct Failure<'a> {
    pub ts: DateTime<Utc>,
    pub ip: IpAddr,
    pub vm: &'a str,
    pub user: Option<&'a str>,
    pub service: &'a str,
    /// Read by this sensor in its own sshd log (the auth-log follower), not reported by an agent:
    /// its own evidence, enough to corroborate a global block (see the module docs).
    pub own: bool,
}

/// A rule reached its threshold: block `ip` (globally or on `rule`'s VM) for `ban_time`.
#[derive(Clone, Debug, PartialEq)]
pub struct Trip {
    pub rule: RuleKind,
    pub ip: IpAddr,
    /// Failures in the window at the trip (= the rule's `max_retry`).
    pub failures: u32,
    pub max_retry: u32,
    pub find_time: Duration,
    /// The first block's length times the escalation for repeat offences.
    pub ban_time: Duration,
    /// 1 for a first offence within `offense_memory`, 2 for the next...
    pub offence: u32,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// VMs the counted failures were against (sorted, deduplicated).
    pub vms: Vec<String>,
    /// Up to [`USER_SAMPLE`] distinct usernames tried.
    pub users: Vec<String>,
    /// Services attacked (sorted, deduplicated): "ssh" makes the alert `ssh_brute_force`.
    pub services: Vec<String>,
    /// The per-VM rule also reached its threshold on this failure (reported within the global trip).
    pub also_per_vm: bool,
    /// Successful logins from this source seen while it was failing (with `on_success = annotate`).
    pub successes: Vec<Success>,
}

/// A successful login noted for annotation.
#[derive(Clone, Debug, PartialEq)]
pub struct Success {
    pub ts: DateTime<Utc>,
    pub vm: String,
    pub user: Option<String>,
}

/// Distinct usernames kept in a trip's evidence.
pub const USER_SAMPLE: usize = 10;
/// Successful logins remembered per source for annotation.
const SUCCESS_MEMORY: usize = 5;

#[derive(Clone, Debug)]
struct Entry {
    ts: DateTime<Utc>,
    vm: Arc<str>,
    user: Option<Arc<str>>,
    service: Arc<str>,
}

/// Who reported a source's recent failures, as far as the global rule needs to know: the newest
/// failure time of each of the two VMs heard from most recently, and of the sensor's own log.
/// Two VMs are enough: if the two latest are not both within the window, no other pair is.
#[derive(Clone, Debug, Default)]
struct Witnesses {
    vms: Vec<(Arc<str>, DateTime<Utc>)>,
    own: Option<DateTime<Utc>>,
}

impl Witnesses {
    fn note(&mut self, e: &Entry, own: bool) {
        if own {
            self.own = self.own.max(Some(e.ts));
        }
        match self.vms.iter_mut().find(|(vm, _)| *vm == e.vm) {
            Some((_, ts)) => *ts = (*ts).max(e.ts),
            None => self.vms.push((e.vm.clone(), e.ts)),
        }
        self.vms.sort_by_key(|&(_, ts)| std::cmp::Reverse(ts));
        self.vms.truncate(2);
    }

    /// Two VMs, or the own log, within the window that ends at `newest`.
    fn corroborate(&self, newest: DateTime<Utc>, rule: &Rule) -> bool {
        let horizon = newest - span(rule.find_time);
        self.own.is_some_and(|t| t > horizon)
            || self.vms.iter().filter(|(_, t)| *t > horizon).count() >= 2
    }
}

#[derive(Clone, Debug, Default)]
struct Window {
    /// Sorted by `ts`, at most `max_retry` entries.
    entries: VecDeque<Entry>,
    /// Global windows only: who reported the failures (the corroboration the global rule needs).
    witnesses: Witnesses,
    /// No trip before this (the key was just blocked).
    held_until: Option<DateTime<Utc>>,
    /// The tracker's failure count at this key's last failure (exact order), for eviction.
    touched: u64,
}

impl Window {
    /// Adds a failure; returns how many lie within `find_time` of the newest one.
    fn push(&mut self, e: Entry, rule: &Rule) -> usize {
        let pos = self
            .entries
            .iter()
            .rposition(|x| x.ts <= e.ts)
            .map_or(0, |i| i + 1);
        self.entries.insert(pos, e);
        if let Some(newest) = self.entries.back().map(|x| x.ts) {
            let horizon = newest - span(rule.find_time);
            while self.entries.front().is_some_and(|x| x.ts <= horizon) {
                self.entries.pop_front();
            }
        }
        while self.entries.len() > rule.max_retry.max(1) as usize {
            self.entries.pop_front();
        }
        self.entries.len()
    }

    fn held(&self, now: DateTime<Utc>) -> bool {
        self.held_until.is_some_and(|t| t > now)
    }

    /// Forgets the counted failures (after a trip, or a successful login with `reset`).
    fn clear(&mut self) -> VecDeque<Entry> {
        self.witnesses = Witnesses::default();
        std::mem::take(&mut self.entries)
    }
}

#[derive(Clone, Debug, Default)]
struct Offences {
    count: u32,
    last: Option<DateTime<Utc>>,
}

/// Escalation settings (from `[events]`).
#[derive(Clone, Debug)]
pub struct Escalation {
    pub factor: f64,
    pub max_ban_time: Duration,
    pub memory: Duration,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            factor: 2.0,
            max_ban_time: Duration::from_secs(7 * 86_400),
            memory: Duration::from_secs(86_400),
        }
    }
}

/// Counting state for every tracked source; see the module docs.
pub struct Tracker {
    global: HashMap<IpAddr, Window>,
    per_vm: HashMap<(IpAddr, Arc<str>), Window>,
    offences: HashMap<(IpAddr, Option<Arc<str>>), Offences>,
    successes: HashMap<IpAddr, VecDeque<Success>>,
    max_tracked: usize,
    escalation: Escalation,
    /// Counts failures; a key's `touched` is the count at its last failure.
    seq: u64,
}

fn span(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// `base · factor^(offence-1)`, capped at `max`, at least 1 s.
pub fn escalated(base: Duration, factor: f64, offence: u32, max: Duration) -> Duration {
    let exp = i32::try_from(offence.saturating_sub(1)).unwrap_or(i32::MAX);
    let secs = base.as_secs_f64() * factor.powi(exp);
    let ttl = if secs.is_finite() && secs < max.as_secs_f64() {
        Duration::from_secs(secs.round() as u64)
    } else {
        max.max(base)
    };
    ttl.max(Duration::from_secs(1))
}

impl Tracker {
    pub fn new(max_tracked: usize, escalation: Escalation) -> Self {
        Tracker {
            global: HashMap::new(),
            per_vm: HashMap::new(),
            offences: HashMap::new(),
            successes: HashMap::new(),
            max_tracked: max_tracked.max(1),
            escalation,
            seq: 0,
        }
    }

    pub fn set_escalation(&mut self, escalation: Escalation) {
        self.escalation = escalation;
    }

    /// Keys tracked (global sources plus source/VM pairs).
    pub fn tracked(&self) -> usize {
        self.global.len() + self.per_vm.len()
    }

    /// Counts one failure at `now`; returns the trip it causes, if any (at most one: the global
    /// rule's if both trip).
    pub fn failure(
        &mut self,
        th: &Thresholds,
        f: &Failure<'_>,
        now: DateTime<Utc>,
    ) -> Option<Trip> {
        let ts = f.ts.min(now);
        let vm_rule = th.for_vm(f.vm).into_owned();
        let global_rule = &th.global;
        let fresh = |rule: &Rule| rule.enabled && ts > now - span(rule.find_time);
        let (count_global, count_vm) = (fresh(global_rule), fresh(&vm_rule));
        if !count_global && !count_vm {
            return None;
        }
        self.make_room(now, th);
        self.seq += 1;
        let seq = self.seq;
        let entry = Entry {
            ts,
            vm: Arc::from(f.vm),
            user: f.user.map(Arc::from),
            service: Arc::from(f.service),
        };
        let mut global_trip = None;
        if count_global {
            let w = self.global.entry(f.ip).or_default();
            w.touched = seq;
            w.witnesses.note(&entry, f.own);
            let n = w.push(entry.clone(), global_rule);
            let newest = w.entries.back().map_or(ts, |e| e.ts);
            if n >= global_rule.max_retry as usize
                && !w.held(now)
                && w.witnesses.corroborate(newest, global_rule)
            {
                global_trip = Some(w.clear());
            }
        }
        let mut vm_trip = None;
        if count_vm {
            let key = (f.ip, entry.vm.clone());
            let global_held = self.global.get(&f.ip).is_some_and(|w| w.held(now));
            let w = self.per_vm.entry(key).or_default();
            w.touched = seq;
            let n = w.push(entry, &vm_rule);
            if n >= vm_rule.max_retry as usize && !w.held(now) && !global_held {
                vm_trip = Some(w.clear());
            }
        }
        if let Some(entries) = global_trip {
            let mut trip = self.trip(RuleKind::Global, f.ip, global_rule, entries, now);
            trip.also_per_vm = vm_trip.is_some();
            if let Some(w) = self.global.get_mut(&f.ip) {
                w.held_until = Some(now + span(trip.ban_time));
            }
            // The global block covers every VM: hold the source's per-VM keys as long.
            for ((ip, _), w) in self.per_vm.iter_mut() {
                if *ip == f.ip {
                    w.held_until = Some(now + span(trip.ban_time));
                    w.clear();
                }
            }
            return Some(trip);
        }
        let entries = vm_trip?;
        let trip = self.trip(
            RuleKind::PerVm(f.vm.to_owned()),
            f.ip,
            &vm_rule,
            entries,
            now,
        );
        if let Some(w) = self.per_vm.get_mut(&(f.ip, Arc::from(f.vm))) {
            w.held_until = Some(now + span(trip.ban_time));
        }
        Some(trip)
    }

    fn trip(
        &mut self,
        rule: RuleKind,
        ip: IpAddr,
        r: &Rule,
        entries: VecDeque<Entry>,
        now: DateTime<Utc>,
    ) -> Trip {
        let scope_key = match &rule {
            RuleKind::Global => None,
            RuleKind::PerVm(vm) => Some(Arc::from(vm.as_str())),
        };
        let off = self.offences.entry((ip, scope_key)).or_default();
        if off
            .last
            .is_some_and(|t| now - t > span(self.escalation.memory))
        {
            off.count = 0;
        }
        off.count = off.count.saturating_add(1);
        off.last = Some(now);
        let offence = off.count;
        let mut vms: Vec<String> = entries.iter().map(|e| e.vm.to_string()).collect();
        vms.sort();
        vms.dedup();
        let mut services: Vec<String> = entries.iter().map(|e| e.service.to_string()).collect();
        services.sort();
        services.dedup();
        let mut users: Vec<String> = Vec::new();
        for u in entries.iter().filter_map(|e| e.user.as_deref()) {
            if users.len() < USER_SAMPLE && !users.iter().any(|x| x == u) {
                users.push(u.to_owned());
            }
        }
        let successes = self
            .successes
            .get(&ip)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        Trip {
            rule,
            ip,
            failures: entries.len() as u32,
            max_retry: r.max_retry,
            find_time: r.find_time,
            ban_time: escalated(
                r.ban_time,
                self.escalation.factor,
                offence,
                self.escalation.max_ban_time,
            ),
            offence,
            first: entries.front().map_or(now, |e| e.ts),
            last: entries.back().map_or(now, |e| e.ts),
            vms,
            users,
            services,
            also_per_vm: false,
            successes,
        }
    }

    /// A successful login: annotate the source's next alert, or reset its counts (see
    /// [`OnSuccess`]).
    pub fn success(
        &mut self,
        ip: IpAddr,
        vm: &str,
        user: Option<&str>,
        ts: DateTime<Utc>,
        mode: OnSuccess,
    ) {
        match mode {
            OnSuccess::Reset => {
                if let Some(w) = self.global.get_mut(&ip) {
                    w.clear();
                }
                if let Some(w) = self.per_vm.get_mut(&(ip, Arc::from(vm))) {
                    w.clear();
                }
            }
            OnSuccess::Annotate => {
                // Only sources that are failing are worth remembering.
                if !self.global.contains_key(&ip) && !self.per_vm.contains_key(&(ip, Arc::from(vm)))
                {
                    return;
                }
                let list = self.successes.entry(ip).or_default();
                list.push_back(Success {
                    ts,
                    vm: vm.to_owned(),
                    user: user.map(str::to_owned),
                });
                while list.len() > SUCCESS_MEMORY {
                    list.pop_front();
                }
            }
        }
    }

    /// Keeps the key count under `max_tracked`: first drop keys with nothing left to count and no
    /// hold, then the least recently touched.
    fn make_room(&mut self, now: DateTime<Utc>, th: &Thresholds) {
        if self.tracked() < self.max_tracked {
            return;
        }
        let longest = span(th.longest_find_time());
        let idle =
            |w: &Window| !w.held(now) && w.entries.back().is_none_or(|e| e.ts <= now - longest);
        self.global.retain(|_, w| !idle(w));
        self.per_vm.retain(|_, w| !idle(w));
        let memory = span(self.escalation.memory);
        self.offences
            .retain(|_, o| o.last.is_some_and(|t| now - t <= memory));
        let global = &self.global;
        self.successes.retain(|ip, _| global.contains_key(ip));
        if self.tracked() >= self.max_tracked {
            let drop = self.max_tracked / 8 + 1;
            // Least recently touched first, keys held for a block last: their source is blocked
            // in the kernel, and forgetting one can only cause a repeat alert, not a missed block.
            let age = |w: &Window| (w.held(now), w.touched);
            let mut ages: Vec<(bool, u64)> = self.global.values().map(age).collect();
            ages.extend(self.per_vm.values().map(age));
            ages.sort_unstable();
            let cutoff = ages
                .get(drop.min(ages.len()).saturating_sub(1))
                .copied()
                .unwrap_or((false, 0));
            self.global.retain(|_, w| age(w) > cutoff);
            self.per_vm.retain(|_, w| age(w) > cutoff);
        }
    }
}

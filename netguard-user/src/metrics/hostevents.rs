//! Host-event metrics: events accepted, duplicated or rejected per source, blocks that events
//! caused per scope, and the auth-log tailer's own counters. Labels are fixed words only (never an
//! address, a VM id or a username).

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    IntCounter, IntCounterVec, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::hostevents::AuthLogCounters;

/// Where host events come from (the `source` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventSource {
    /// The sensor's own sshd log.
    Authlog,
    /// `POST /api/v1/events`.
    Api,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Authlog => "authlog",
            EventSource::Api => "api",
        }
    }
}

/// What became of an event (the `result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventResult {
    Accepted,
    Duplicate,
    Rejected,
}

impl EventResult {
    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Rejected => "rejected",
        }
    }
}

/// The tailer's counters at scrape time (0 until a tailer is attached with
/// [`HostEventMetrics::watch_authlog`]).
#[derive(Clone)]
struct AuthLogCollector {
    counters: Arc<Mutex<Option<Arc<AuthLogCounters>>>>,
    /// Built once only to own the descriptors the registry checks for duplicates; never collected.
    templates: Arc<Vec<IntCounter>>,
}

impl AuthLogCollector {
    fn new() -> Self {
        let templates = AUTHLOG
            .iter()
            .map(|(name, help)| IntCounter::new(*name, *help).expect("valid counter"))
            .collect();
        AuthLogCollector {
            counters: Arc::default(),
            templates: Arc::new(templates),
        }
    }
}

const AUTHLOG: [(&str, &str); 8] = [
    (
        "netguard_authlog_lines_total",
        "Complete lines the auth-log tailer read.",
    ),
    (
        "netguard_authlog_matched_total",
        "sshd login events the auth-log tailer recognised (a folded \"message repeated N times\" counts N).",
    ),
    (
        "netguard_authlog_unmatched_lines_total",
        "Auth-log lines that were not sshd login lines (other programs, other sshd messages).",
    ),
    (
        "netguard_authlog_rotations_total",
        "Times a new file took the auth log's path (rename rotation).",
    ),
    (
        "netguard_authlog_truncations_total",
        "Times the auth log was cut shorter than what had been read (copytruncate).",
    ),
    (
        "netguard_authlog_overlong_lines_total",
        "Auth-log lines longer than the line limit (16 KiB), dropped whole.",
    ),
    (
        "netguard_authlog_repeats_clamped_total",
        "\"message repeated N times\" lines whose N was cut to the repeat limit (100).",
    ),
    (
        "netguard_authlog_wrong_shape_lines_total",
        "Auth-log lines of a shape the --auth-log-format does not accept (bare lines in a syslog file, or the reverse), ignored.",
    ),
];

impl Collector for AuthLogCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.templates.iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.snapshot())
            .unwrap_or_default();
        let values = [
            stats.lines,
            stats.events,
            stats.unparsed,
            stats.rotations,
            stats.truncations,
            stats.overlong,
            stats.repeats_clamped,
            stats.wrong_shape,
        ];
        AUTHLOG
            .iter()
            .zip(values)
            .flat_map(|((name, help), v)| {
                let c = IntCounter::new(*name, *help).expect("valid counter");
                c.inc_by(v);
                c.collect()
            })
            .collect()
    }
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct HostEventMetrics {
    events: IntCounterVec,
    blocks: IntCounterVec,
    authlog: AuthLogCollector,
}

impl HostEventMetrics {
    pub(crate) fn register(registry: &Registry) -> Self {
        let events = IntCounterVec::new(
            Opts::new(
                "netguard_host_events_total",
                "Host events (login failures and successes), by source (authlog, api) and result \
                 (accepted, duplicate: seen before within the retention window, rejected: invalid).",
            ),
            &["source", "result"],
        )
        .expect("valid counter");
        let blocks = IntCounterVec::new(
            Opts::new(
                "netguard_event_blocks_total",
                "Blocks made because host events reached a threshold, by scope (global, vm).",
            ),
            &["scope"],
        )
        .expect("valid counter");
        let authlog = AuthLogCollector::new();
        for c in [
            Box::new(events.clone()) as Box<dyn Collector>,
            Box::new(blocks.clone()),
            Box::new(authlog.clone()),
        ] {
            registry.register(c).expect("metric registered twice");
        }
        for source in [EventSource::Authlog, EventSource::Api] {
            for result in [
                EventResult::Accepted,
                EventResult::Duplicate,
                EventResult::Rejected,
            ] {
                events.with_label_values(&[source.as_str(), result.as_str()]);
            }
        }
        for scope in ["global", "vm"] {
            blocks.with_label_values(&[scope]);
        }
        HostEventMetrics {
            events,
            blocks,
            authlog,
        }
    }

    pub fn events(&self, source: EventSource, result: EventResult, n: u64) {
        if n > 0 {
            self.events
                .with_label_values(&[source.as_str(), result.as_str()])
                .inc_by(n);
        }
    }

    /// One block made by a threshold; `global` false means scoped to a VM.
    pub fn block(&self, global: bool) {
        self.blocks
            .with_label_values(&[if global { "global" } else { "vm" }])
            .inc();
    }

    /// Exports this tailer's counters from now on.
    pub fn watch_authlog(&self, counters: Arc<AuthLogCounters>) {
        *self
            .authlog
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(counters);
    }
}

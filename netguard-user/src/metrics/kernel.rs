//! The kernel's global counters as Prometheus counters.
//!
//! The XDP program keeps its own monotonic per-CPU counters; userspace sums them (`Datapath::counters`).
//! Mirroring them into `IntCounter`s with `inc_by(new - old)` would drift the moment a snapshot is
//! missed, reordered or taken from a reloaded datapath. Instead this collector keeps only the latest
//! snapshot and builds the families from it at scrape time, so the exposed value *is* the kernel's value.

use std::sync::{Arc, Mutex, PoisonError};

use netguard_common::{Counter, Counters};
use prometheus::{
    IntCounter, IntCounterVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};

/// One exported family of kernel counters.
pub(crate) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    /// The family's one label, or `None` for a single series.
    pub label: Option<&'static str>,
    /// Counters summed into a label-less family in addition to those [`series`] maps to it.
    pub sum_of: &'static [Counter],
}

pub(crate) const PARSE_ERRORS_TOTAL: &str = "netguard_parse_errors_total";
const PARSE_BY_REASON: &str = "netguard_parse_errors_by_reason_total";

/// Every kernel family. Names and HELP are part of the contract in DESIGN.md (and the dashboards).
pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "netguard_packets_total",
        help: "Packets seen by the XDP program, by verdict (pass or drop).",
        label: Some("action"),
        sum_of: &[],
    },
    Family {
        name: "netguard_bytes_total",
        help: "Bytes (whole frames) seen by the XDP program, by verdict (pass or drop).",
        label: Some("action"),
        sum_of: &[],
    },
    Family {
        name: "netguard_drops_total",
        help: "Packets dropped by the XDP program, by reason.",
        label: Some("reason"),
        sum_of: &[],
    },
    Family {
        name: PARSE_ERRORS_TOTAL,
        help: "Packets the XDP program could not parse (all reasons); they are passed, not dropped.",
        label: None,
        sum_of: &Counter::PARSE_ERRORS,
    },
    Family {
        name: PARSE_BY_REASON,
        help: "Packets the XDP program could not parse, by reason; they are passed, not dropped.",
        label: Some("reason"),
        sum_of: &[],
    },
    Family {
        name: "netguard_allowlist_overrides_total",
        help: "Blocklist matches that an allowlist entry overrode (the packet was passed).",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_non_ip_packets_total",
        help: "Frames that are neither IPv4 nor IPv6 (ARP, LLDP, ...), passed untouched.",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_fragments_total",
        help: "IPv4 and IPv6 non-first fragments (accounted to their flow with zero ports).",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_vlan_packets_total",
        help: "VLAN-tagged frames (802.1Q or 802.1ad, one or two tags).",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_flows_created_total",
        help: "Flows inserted into the kernel flow table (first packet of a flow, or after eviction).",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_flow_insert_failures_total",
        help: "Flow-table inserts the kernel refused; the packet was still counted and passed.",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_ringbuf_events_total",
        help: "Events (new flows, rate-limited blocklist hits) the XDP program sent to userspace through the ring buffer.",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_ringbuf_events_over_budget_total",
        help: "Events not sent because the per-CPU event budget was exhausted (flood protection).",
        label: None,
        sum_of: &[],
    },
    Family {
        name: "netguard_ringbuf_events_lost_total",
        help: "Events lost because the ring buffer was full (userspace not keeping up).",
        label: None,
        sum_of: &[],
    },
];

/// The family (and label value) each kernel counter is exported as. The match is exhaustive on
/// purpose: a new `Counter` variant does not compile until someone decides how it is exported.
pub(crate) const fn series(c: Counter) -> (&'static str, Option<&'static str>) {
    match c {
        Counter::PassPackets => ("netguard_packets_total", Some("pass")),
        Counter::DropPackets => ("netguard_packets_total", Some("drop")),
        Counter::PassBytes => ("netguard_bytes_total", Some("pass")),
        Counter::DropBytes => ("netguard_bytes_total", Some("drop")),
        Counter::DropBlocklistV4 => ("netguard_drops_total", Some("blocklist_v4")),
        Counter::DropBlocklistV6 => ("netguard_drops_total", Some("blocklist_v6")),
        Counter::AllowlistOverride => ("netguard_allowlist_overrides_total", None),
        Counter::ParseTruncatedL2 => (PARSE_BY_REASON, Some("truncated_l2")),
        Counter::ParseTruncatedL3 => (PARSE_BY_REASON, Some("truncated_l3")),
        Counter::ParseTruncatedL4 => (PARSE_BY_REASON, Some("truncated_l4")),
        Counter::ParseBadIpHeader => (PARSE_BY_REASON, Some("bad_ip_header")),
        Counter::ParseIpv6ExtLimit => (PARSE_BY_REASON, Some("ipv6_ext_limit")),
        Counter::NonIp => ("netguard_non_ip_packets_total", None),
        Counter::Fragments => ("netguard_fragments_total", None),
        Counter::Vlan => ("netguard_vlan_packets_total", None),
        Counter::FlowsCreated => ("netguard_flows_created_total", None),
        Counter::FlowInsertFailed => ("netguard_flow_insert_failures_total", None),
        Counter::EventsSent => ("netguard_ringbuf_events_total", None),
        Counter::EventsOverBudget => ("netguard_ringbuf_events_over_budget_total", None),
        Counter::RingbufReserveFailed => ("netguard_ringbuf_events_lost_total", None),
    }
}

/// A family's metric object; a fresh one is built per scrape and filled from the snapshot.
enum Built {
    Single(IntCounter),
    Labelled(IntCounterVec),
}

impl Built {
    fn new(f: &Family) -> Built {
        // Names and HELP are constants checked by the unit tests, so a failure here is a bug in the
        // table above, not a runtime condition.
        let opts = Opts::new(f.name, f.help);
        match f.label {
            None => Built::Single(IntCounter::with_opts(opts).expect("valid kernel metric")),
            Some(l) => {
                Built::Labelled(IntCounterVec::new(opts, &[l]).expect("valid kernel metric"))
            }
        }
    }

    fn desc(&self) -> Vec<&Desc> {
        match self {
            Built::Single(c) => c.desc(),
            Built::Labelled(v) => v.desc(),
        }
    }
}

pub(crate) struct KernelCollector {
    snapshot: Arc<Mutex<Counters>>,
    /// Built once only to own the descriptors the registry checks for duplicates; never collected.
    templates: Vec<Built>,
}

impl KernelCollector {
    pub(crate) fn new(snapshot: Arc<Mutex<Counters>>) -> Self {
        Self {
            snapshot,
            templates: FAMILIES.iter().map(Built::new).collect(),
        }
    }
}

/// Reads the snapshot; a poisoned lock still holds a complete `Counters` (it is `Copy`), so it is used.
pub(crate) fn read(snapshot: &Mutex<Counters>) -> Counters {
    *snapshot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.templates.iter().flat_map(Built::desc).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = read(&self.snapshot);
        let mut out = Vec::with_capacity(FAMILIES.len());
        for f in FAMILIES {
            match Built::new(f) {
                Built::Single(c) => {
                    let mapped = Counter::ALL
                        .iter()
                        .filter(|&&k| series(k) == (f.name, None));
                    c.inc_by(mapped.chain(f.sum_of).map(|&k| snap.get(k)).sum());
                    out.extend(c.collect());
                }
                Built::Labelled(v) => {
                    for &k in &Counter::ALL {
                        if let (name, Some(value)) = series(k)
                            && name == f.name
                        {
                            v.with_label_values(&[value]).inc_by(snap.get(k));
                        }
                    }
                    out.extend(v.collect());
                }
            }
        }
        out
    }
}

//! Prometheus metrics for `GET /metrics`.
//!
//! The names, HELP strings and labels here are a contract (DESIGN.md, "Metrics"): dashboards and alert
//! rules are written against them. Two rules shape the code:
//! - kernel counters are exposed at exactly the kernel's value (see [`kernel`]), not re-counted;
//! - no label ever carries an IP address or another unbounded value. Every label value is either a
//!   constant from this module or passes through a sanitiser ([`route_label`], [`method_label`],
//!   [`alert_class_label`]), because one scan with random sources would otherwise create a series
//!   per address and take Prometheus down with the sensor.
//!
//! `Metrics` is cheap to clone (every field is an `Arc` inside) and every method takes `&self`, so the
//! API, the detector and the store can each hold a copy.

mod hostevents;
mod kernel;
#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use ipnet::IpNet;
use netguard_common::Counters;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::datapath::{Datapath, DatapathError};
pub use hostevents::{EventResult, EventSource, HostEventMetrics};

/// `Content-Type` of [`Metrics::render`]'s output (text exposition format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Alert classes (DESIGN.md) plus `blocklist_hit`. Each is exported at 0 from the start so that
/// dashboards and `rate()` have a series before the first alert.
pub const ALERT_CLASSES: [&str; 7] = [
    "syn_flood",
    "udp_flood",
    "icmp_flood",
    "port_scan",
    "ssh_brute_force",
    "brute_force",
    "blocklist_hit",
];

/// Label value for alert classes this build does not know (keeps the label set bounded).
pub const OTHER_CLASS: &str = "other";

/// Label value for requests that matched no route (404 probes, scanners): their raw paths must never
/// become label values.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Request-latency buckets: 0.5 ms (a cached GET) up to 10 s (a bulk blocklist import).
pub const HTTP_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Which blocklist entries a gauge value counts: fleet-wide (`global`) or this sensor's own (`local`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlocklistScope {
    Global,
    Local,
}

impl BlocklistScope {
    pub const ALL: [BlocklistScope; 2] = [BlocklistScope::Global, BlocklistScope::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            BlocklistScope::Global => "global",
            BlocklistScope::Local => "local",
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    kernel: Arc<Mutex<Counters>>,
    flows_active: IntGauge,
    blocklist_entries: IntGaugeVec,
    allowlist_entries: IntGauge,
    alerts: IntCounterVec,
    http: HistogramVec,
    store_queued_writes: IntGauge,
    store_backlog: IntGaugeVec,
    store_up: IntGauge,
    datapath_attached: IntGauge,
    host_events: HostEventMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a clone of `m` (the registry keeps its own handle; ours stays usable).
fn reg<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: &M) {
    // Names and label sets are constants; a clash is a bug that the unit tests catch.
    registry
        .register(Box::new(m.clone()))
        .expect("metric registered twice");
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    reg(registry, &g);
    g
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let kernel = Arc::new(Mutex::new(Counters::default()));
        registry
            .register(Box::new(kernel::KernelCollector::new(kernel.clone())))
            .expect("kernel metrics registered twice");

        let flows_active = gauge(
            &registry,
            "netguard_flows_active",
            "Flows currently in the kernel flow table (as of the latest flow-table read).",
        );
        let blocklist_entries = IntGaugeVec::new(
            Opts::new(
                "netguard_blocklist_entries",
                "Blocklist entries, by scope (global: fleet-wide, local: this sensor only).",
            ),
            &["scope"],
        )
        .expect("valid gauge");
        reg(&registry, &blocklist_entries);
        let allowlist_entries = gauge(
            &registry,
            "netguard_allowlist_entries",
            "Allowlist entries (CIDRs that are never dropped).",
        );
        let alerts = IntCounterVec::new(
            Opts::new("netguard_alerts_total", "Alerts raised, by class."),
            &["class"],
        )
        .expect("valid counter");
        reg(&registry, &alerts);
        let http = HistogramVec::new(
            HistogramOpts::new(
                "netguard_http_request_duration_seconds",
                "API request latency in seconds, by method, matched route template and status code.",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["method", "route", "status"],
        )
        .expect("valid histogram");
        reg(&registry, &http);
        let store_queued_writes = gauge(
            &registry,
            "netguard_store_queued_writes",
            "State writes queued while the store is unreachable (replayed when it comes back).",
        );
        let store_backlog = IntGaugeVec::new(
            Opts::new(
                "netguard_store_backlog",
                "Store writes queued for retry by kind (lists, alerts, events, other): the store is unreachable or refusing writes; the kernel already enforces the list changes.",
            ),
            &["kind"],
        )
        .expect("valid gauge");
        reg(&registry, &store_backlog);
        let store_up = gauge(
            &registry,
            "netguard_store_up",
            "1 if the state store (Redis or embedded) answered its latest check, else 0.",
        );
        let datapath_attached = gauge(
            &registry,
            "netguard_datapath_attached",
            "1 if the XDP program is attached to an interface, else 0.",
        );
        let build_info = IntGaugeVec::new(
            Opts::new(
                "netguard_build_info",
                "Always 1; the labels describe the running build.",
            ),
            &["version"],
        )
        .expect("valid gauge");
        reg(&registry, &build_info);
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        // Series that exist before their first event, so dashboards show 0 rather than "No data".
        for class in ALERT_CLASSES {
            alerts.with_label_values(&[class]);
        }
        for scope in BlocklistScope::ALL {
            blocklist_entries.with_label_values(&[scope.as_str()]);
        }
        // A histogram family with no series is not rendered at all; the scrape route itself is a
        // request that will exist on every instrumented sensor.
        http.with_label_values(&["GET", "/metrics", "200"]);
        let host_events = HostEventMetrics::register(&registry);

        Self {
            registry,
            kernel,
            flows_active,
            blocklist_entries,
            allowlist_entries,
            alerts,
            http,
            store_queued_writes,
            store_backlog,
            store_up,
            datapath_attached,
            host_events,
        }
    }

    /// Host-event counters (`netguard_host_events_total`, `netguard_event_blocks_total`, the
    /// auth-log tailer's `netguard_authlog_*`).
    pub fn host_events(&self) -> &HostEventMetrics {
        &self.host_events
    }

    /// The registry, for components that export their own (bounded-label) metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Replaces the kernel counter snapshot that the next scrape reports.
    pub fn set_kernel(&self, counters: &Counters) {
        *self.kernel.lock().unwrap_or_else(PoisonError::into_inner) = *counters;
    }

    /// The snapshot the next scrape reports.
    pub fn kernel(&self) -> Counters {
        kernel::read(&self.kernel)
    }

    /// What a `/metrics` handler does before [`render`](Self::render): reads the kernel counters (one
    /// per-CPU map lookup) and whether the program is attached. The flow table is deliberately not read
    /// here (a million flows per scrape is too much); the flow poller calls `set_flows_active`.
    // DatapathError is large, but it is the error every Datapath call returns; boxing it only here
    // would make this the one call whose error callers handle differently.
    #[allow(clippy::result_large_err)]
    pub fn refresh_from(&self, dp: &Datapath) -> Result<(), DatapathError> {
        self.set_kernel(&dp.counters()?);
        self.set_datapath_attached(dp.attached().is_some());
        self.set_allowlist_entries(dp.allowlist.len());
        Ok(())
    }

    pub fn set_flows_active(&self, n: usize) {
        self.flows_active.set(to_i64(n));
    }

    pub fn set_blocklist_entries(&self, scope: BlocklistScope, n: usize) {
        self.blocklist_entries
            .with_label_values(&[scope.as_str()])
            .set(to_i64(n));
    }

    pub fn set_allowlist_entries(&self, n: usize) {
        self.allowlist_entries.set(to_i64(n));
    }

    /// Counts one alert; an unknown class is counted as `other` (see [`alert_class_label`]).
    pub fn inc_alert(&self, class: &str) {
        self.alerts
            .with_label_values(&[alert_class_label(class)])
            .inc();
    }

    /// Records one API request. `route` must be the matched route template (axum's `MatchedPath`, e.g.
    /// "/api/v1/blocklist"), or [`UNMATCHED_ROUTE`]; a raw path is sanitised, never trusted.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let status = status_label(status);
        self.http
            .with_label_values(&[method_label(method), &route_label(route), &status])
            .observe(seconds);
    }

    /// [`observe_http`](Self::observe_http) with the time elapsed since `start`. For an axum
    /// middleware (`axum::middleware::from_fn_with_state`):
    ///
    /// ```ignore
    /// async fn track(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    ///     let start = Instant::now();
    ///     let method = req.method().clone();
    ///     let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    ///     let resp = next.run(req).await;
    ///     let route = route.as_deref().unwrap_or(metrics::UNMATCHED_ROUTE);
    ///     m.observe_http_since(method.as_str(), route, resp.status().as_u16(), start);
    ///     resp
    /// }
    /// ```
    pub fn observe_http_since(&self, method: &str, route: &str, status: u16, start: Instant) {
        self.observe_http(method, route, status, start.elapsed().as_secs_f64());
    }

    pub fn set_store_queued_writes(&self, n: usize) {
        self.store_queued_writes.set(to_i64(n));
    }

    /// `netguard_store_backlog{kind}` from [`netguard_store::Store::queued_by_class`].
    pub fn set_store_backlog(&self, by_class: &[(netguard_store::WriteClass, usize)]) {
        for (class, n) in by_class {
            self.store_backlog
                .with_label_values(&[class.label()])
                .set(to_i64(*n));
        }
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    pub fn set_datapath_attached(&self, attached: bool) {
        self.datapath_attached.set(i64::from(attached));
    }

    /// The text exposition (serve it with [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec fails only on invalid families, which the registry refused already.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory");
        String::from_utf8(buf).expect("the text encoder writes UTF-8")
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Known HTTP methods pass through; anything else (a scanner's "FOO") becomes `OTHER`.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .unwrap_or("OTHER")
}

/// Status codes outside 100..=599 cannot come from a real response; they collapse to one value.
fn status_label(status: u16) -> String {
    if (100..=599).contains(&status) {
        status.to_string()
    } else {
        "invalid".into()
    }
}

/// Known alert classes pass through; anything else is `other`, so a detector bug or a hostile agent
/// event cannot put an address or an unbounded string into a label.
pub fn alert_class_label(class: &str) -> &'static str {
    ALERT_CLASSES
        .into_iter()
        .find(|c| *c == class)
        .unwrap_or(OTHER_CLASS)
}

/// A route template for the `route` label. Callers pass a matched template; this is the safety net
/// for one that passes a raw path: the query is dropped, any segment that is (or percent-decodes to)
/// an IP address or CIDR becomes `{ip}`, and anything that does not look like a path is
/// [`UNMATCHED_ROUTE`].
pub fn route_label(route: &str) -> Cow<'_, str> {
    let path = route.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') || path.len() > 128 {
        return Cow::Borrowed(UNMATCHED_ROUTE);
    }
    if !path.split('/').any(is_address) {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if is_address(s) { "{ip}" } else { s })
        .collect();
    Cow::Owned(segments.join("/"))
}

/// True if a path segment is an IP address or CIDR, also when percent-encoded ("10.0.0.0%2F8",
/// "fd00%3A%3A1").
fn is_address(segment: &str) -> bool {
    let decoded = segment
        .replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%3A", ":")
        .replace("%3a", ":");
    decoded.parse::<IpAddr>().is_ok() || decoded.parse::<IpNet>().is_ok()
}

//! Unit tests for the exposition contract; none needs root or a kernel.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use netguard_common::{Counter, Counters};

use super::kernel::{FAMILIES, PARSE_ERRORS_TOTAL, series};
use super::*;

/// The names DESIGN.md promises, then the extras dashboards use.
const CONTRACT: [(&str, &str); 9] = [
    ("netguard_packets_total", "counter"),
    ("netguard_bytes_total", "counter"),
    ("netguard_drops_total", "counter"),
    ("netguard_flows_active", "gauge"),
    ("netguard_blocklist_entries", "gauge"),
    ("netguard_alerts_total", "counter"),
    ("netguard_ringbuf_events_lost_total", "counter"),
    ("netguard_parse_errors_total", "counter"),
    ("netguard_http_request_duration_seconds", "histogram"),
];
const EXTRAS: [(&str, &str); 14] = [
    ("netguard_parse_errors_by_reason_total", "counter"),
    ("netguard_ringbuf_events_total", "counter"),
    ("netguard_ringbuf_events_over_budget_total", "counter"),
    ("netguard_flows_created_total", "counter"),
    ("netguard_flow_insert_failures_total", "counter"),
    ("netguard_allowlist_overrides_total", "counter"),
    ("netguard_non_ip_packets_total", "counter"),
    ("netguard_fragments_total", "counter"),
    ("netguard_vlan_packets_total", "counter"),
    ("netguard_allowlist_entries", "gauge"),
    ("netguard_store_queued_writes", "gauge"),
    ("netguard_store_up", "gauge"),
    ("netguard_datapath_attached", "gauge"),
    ("netguard_build_info", "gauge"),
];

/// Sample lines of an exposition: `series -> value`, where series is the text before the value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line has a value");
            (series.to_string(), value.parse().expect("numeric sample"))
        })
        .collect()
}

fn series_text(c: Counter) -> String {
    let (name, value) = series(c);
    let label = FAMILIES
        .iter()
        .find(|f| f.name == name)
        .and_then(|f| f.label);
    match (label, value) {
        (Some(l), Some(v)) => format!("{name}{{{l}=\"{v}\"}}"),
        _ => name.to_string(),
    }
}

#[test]
fn every_contract_name_is_rendered_with_help_and_type() {
    let text = Metrics::new().render();
    for (name, ty) in CONTRACT.iter().chain(EXTRAS.iter()) {
        let help = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
            .unwrap_or_else(|| panic!("no HELP for {name} in:\n{text}"));
        assert!(help.len() > 10, "{name} has a too-short HELP: {help:?}");
        assert!(
            text.contains(&format!("# TYPE {name} {ty}\n")),
            "{name} is not a {ty}"
        );
    }
}

#[test]
fn every_sample_belongs_to_a_family_with_help() {
    let text = Metrics::new().render();
    let helped: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for series in samples(&text).keys() {
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("netguard_"),
            "{name} lacks the netguard_ prefix"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| helped.contains(f)))
            .unwrap_or(name);
        assert!(helped.contains(&family), "{name} has no HELP");
    }
}

#[test]
fn every_kernel_counter_is_exported_under_a_known_family() {
    for c in Counter::ALL {
        let (name, value) = series(c);
        let f = FAMILIES
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{} maps to unknown family {name}", c.name()));
        assert_eq!(
            f.label.is_some(),
            value.is_some(),
            "{}: label mismatch",
            c.name()
        );
    }
}

#[test]
fn kernel_collector_reports_exactly_the_snapshot() {
    let m = Metrics::new();
    // Distinct values per slot, some beyond u32, so a swapped or truncated slot shows.
    let mut c = Counters::default();
    for (i, v) in c.v.iter_mut().enumerate() {
        *v = (i as u64 + 1) * 1_000_003 + (1 << 33);
    }
    m.set_kernel(&c);
    let s = samples(&m.render());
    for k in Counter::ALL {
        assert_eq!(s[&series_text(k)], c.get(k) as f64, "{}", k.name());
    }
    let parse: u64 = Counter::PARSE_ERRORS.iter().map(|&k| c.get(k)).sum();
    assert_eq!(s[PARSE_ERRORS_TOTAL], parse as f64);

    // A smaller snapshot (a reloaded datapath) is reported as is: no deltas are accumulated.
    let mut small = Counters::default();
    small.v[Counter::DropPackets as usize] = 7;
    m.set_kernel(&small);
    let s = samples(&m.render());
    assert_eq!(s["netguard_packets_total{action=\"drop\"}"], 7.0);
    assert_eq!(s["netguard_packets_total{action=\"pass\"}"], 0.0);
    assert_eq!(s[PARSE_ERRORS_TOTAL], 0.0);
    assert_eq!(m.kernel(), small);
}

#[test]
fn fresh_metrics_have_zero_series_for_dashboards() {
    let s = samples(&Metrics::new().render());
    for class in ALERT_CLASSES {
        assert_eq!(
            s[&format!("netguard_alerts_total{{class=\"{class}\"}}")],
            0.0
        );
    }
    for scope in ["global", "local"] {
        assert_eq!(
            s[&format!("netguard_blocklist_entries{{scope=\"{scope}\"}}")],
            0.0
        );
    }
    assert_eq!(s["netguard_drops_total{reason=\"blocklist_v4\"}"], 0.0);
    assert_eq!(s["netguard_drops_total{reason=\"blocklist_v6\"}"], 0.0);
    let build = format!(
        "netguard_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(s[&build], 1.0);
}

#[test]
fn setters_reach_the_exposition() {
    let m = Metrics::new();
    m.set_flows_active(42);
    m.set_blocklist_entries(BlocklistScope::Global, 3);
    m.set_blocklist_entries(BlocklistScope::Local, 5);
    m.set_allowlist_entries(2);
    m.inc_alert("port_scan");
    m.inc_alert("port_scan");
    m.set_store_queued_writes(9);
    m.set_store_up(true);
    m.set_datapath_attached(true);
    m.observe_http("get", "/api/v1/blocklist", 200, 0.003);
    let s = samples(&m.render());
    assert_eq!(s["netguard_flows_active"], 42.0);
    assert_eq!(s["netguard_blocklist_entries{scope=\"global\"}"], 3.0);
    assert_eq!(s["netguard_blocklist_entries{scope=\"local\"}"], 5.0);
    assert_eq!(s["netguard_allowlist_entries"], 2.0);
    assert_eq!(s["netguard_alerts_total{class=\"port_scan\"}"], 2.0);
    assert_eq!(s["netguard_store_queued_writes"], 9.0);
    assert_eq!(s["netguard_store_up"], 1.0);
    assert_eq!(s["netguard_datapath_attached"], 1.0);
    let h = "netguard_http_request_duration_seconds";
    let labels = "method=\"GET\",route=\"/api/v1/blocklist\",status=\"200\"";
    assert_eq!(s[&format!("{h}_count{{{labels}}}")], 1.0);
    assert_eq!(s[&format!("{h}_bucket{{{labels},le=\"0.005\"}}")], 1.0);
    assert_eq!(s[&format!("{h}_bucket{{{labels},le=\"0.0025\"}}")], 0.0);
}

#[test]
fn no_label_value_is_an_ip_address_even_with_hostile_input() {
    let m = Metrics::new();
    m.inc_alert("10.0.0.1");
    m.inc_alert("fd00::1");
    m.observe_http("GET", "/api/v1/block/10.1.2.3", 204, 0.01);
    m.observe_http("DELETE", "/api/v1/blocklist?cidr=10.0.0.0/8", 200, 0.01);
    m.observe_http("GET", "/block/fd00%3A%3A1", 404, 0.01);
    m.observe_http("GET", "/block/10.0.0.0%2F8", 404, 0.01);
    m.observe_http("GET", "10.9.9.9", 404, 0.01);
    m.observe_http("BREW", "/api/v1/vms/{vm_id}", 999, 0.01);
    for family in m.registry().gather() {
        for metric in family.get_metric() {
            for pair in metric.get_label() {
                let v = pair.value();
                assert!(
                    v.parse::<IpAddr>().is_err() && v.parse::<IpNet>().is_err(),
                    "{}{{{}={v:?}}} is an address",
                    family.name(),
                    pair.name()
                );
                assert!(
                    !v.contains("10.") && !v.contains("::1"),
                    "{v:?} leaks an address"
                );
            }
        }
    }
    let s = samples(&m.render());
    assert_eq!(s["netguard_alerts_total{class=\"other\"}"], 2.0);
    let count =
        |labels: &str| s[&format!("netguard_http_request_duration_seconds_count{{{labels}}}")];
    assert_eq!(
        count("method=\"GET\",route=\"/api/v1/block/{ip}\",status=\"204\""),
        1.0
    );
    assert_eq!(
        count("method=\"DELETE\",route=\"/api/v1/blocklist\",status=\"200\""),
        1.0
    );
    assert_eq!(
        count("method=\"GET\",route=\"/block/{ip}\",status=\"404\""),
        2.0
    );
    assert_eq!(
        count("method=\"GET\",route=\"unmatched\",status=\"404\""),
        1.0
    );
    assert_eq!(
        count("method=\"OTHER\",route=\"/api/v1/vms/{vm_id}\",status=\"invalid\""),
        1.0
    );
}

#[test]
fn route_templates_pass_through_unchanged() {
    for r in [
        "/api/v1/blocklist",
        "/api/v1/vms/{vm_id}/attacks",
        "/block/:ip",
        "/metrics",
        "/",
    ] {
        assert_eq!(route_label(r), r);
    }
    assert_eq!(route_label(""), UNMATCHED_ROUTE);
    assert_eq!(
        route_label(&format!("/{}", "a".repeat(200))),
        UNMATCHED_ROUTE
    );
}

#[test]
fn clones_share_one_registry() {
    let a = Metrics::new();
    let b = a.clone();
    b.set_flows_active(7);
    assert!(a.render().contains("\nnetguard_flows_active 7\n"));
}

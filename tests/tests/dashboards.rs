//! The Grafana dashboards in `dashboards/` against the code: they type-check against Grafana's schema,
//! every metric they query is one `netguard` exports (a renamed metric would otherwise leave an empty
//! panel that nobody notices), every PromQL expression parses, and the overview covers what an operator
//! needs. No root needed; needs Node.js/npm (and promtool for the PromQL check), which
//! `cargo xtask setup` installs.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use netguard_user::metrics::Metrics;
use serde_json::Value;

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// Missing tools fail (the xtask installs them) unless skipping is explicitly allowed, visibly.
fn require_tool(tool: &str, why: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
        return true;
    }
    let msg = format!("{tool} not found ({why}): run `cargo xtask setup`");
    if std::env::var("NETGUARD_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        // Straight to stderr: libtest captures eprintln! of passing tests, and a skip must be seen.
        let _ = writeln!(std::io::stderr(), "SKIP: {msg}");
        false
    } else {
        panic!("{msg}");
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `netguard-*.json` dashboard, by file name.
fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = fs::read_dir(dashboards_dir())
        .expect("dashboards/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("netguard-") && name.ends_with(".json")
        })
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no netguard-*.json dashboard found");
    out
}

/// Panels including those nested in collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// (panel title, expr) of every query in a dashboard.
fn exprs(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

/// `netguard_*` identifiers in a PromQL expression, with histogram suffixes stripped when the base
/// name is an exported histogram.
fn metric_names(expr: &str, histograms: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("netguard_") {
        // A match inside a longer identifier (e.g. "x_netguard_y") is not a metric name.
        let prev = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let name = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| histograms.contains(*b)))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// (families with HELP, histogram families) of a fresh exposition.
fn exported() -> (BTreeSet<String>, BTreeSet<String>) {
    // The daemon's exposition: the base metrics plus those the detection loop registers at start.
    let m = Metrics::new();
    netguard_user::sensor::SensorMetrics::register(&m);
    m.registry()
        .register(Box::new(netguard_user::control::caps::capped_counter()))
        .unwrap();
    let text = m.render();
    let helped = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let histograms = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .map(str::to_string)
        .collect();
    (helped, histograms)
}

#[test]
fn dashboards_type_check_against_grafana_schema() {
    if !require_tool("npm", "type-checking dashboards against @grafana/schema") {
        return;
    }
    let dir = dashboards_dir();
    if !dir.join("node_modules").is_dir() {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir));
    }
    // --no-install: use the locked TypeScript from node_modules, never fetch another one.
    run(Command::new("npx")
        .args(["--no-install", "tsc", "--noEmit", "-p", "."])
        .current_dir(&dir));

    // tsc checks only what check/dashboard.ts imports: every dashboard must be there.
    let check = fs::read_to_string(dir.join("check/dashboard.ts")).unwrap();
    for (name, _) in dashboards() {
        assert!(
            check.contains(&format!("'../{name}'")),
            "check/dashboard.ts does not import {name}"
        );
    }
}

#[test]
fn every_queried_metric_is_exported_with_help() {
    let (helped, histograms) = exported();
    for (file, d) in dashboards() {
        let mut queries = exprs(&d);
        for var in d["templating"]["list"].as_array().into_iter().flatten() {
            let q = var["query"]["query"].as_str().or(var["query"].as_str());
            queries.extend(q.map(|q| (format!("variable {}", var["name"]), q.to_string())));
        }
        assert!(!queries.is_empty(), "{file} has no queries");
        for (title, expr) in queries {
            let names = metric_names(&expr, &histograms);
            assert!(
                !names.is_empty() || !expr.contains("netguard"),
                "{file}/{title}: {expr}"
            );
            for name in names {
                assert!(
                    helped.contains(&name),
                    "{file}, panel {title:?}: {name} is not exported by Metrics (query: {expr})"
                );
            }
        }
    }
}

#[test]
fn overview_covers_the_operator_topics() {
    let (_, histograms) = exported();
    let d = dashboards()
        .into_iter()
        .find(|(f, _)| f == "netguard-overview.json")
        .expect("netguard-overview.json")
        .1;
    let used: BTreeSet<String> = exprs(&d)
        .iter()
        .flat_map(|(_, e)| metric_names(e, &histograms))
        .collect();
    for topic in [
        "netguard_packets_total",
        "netguard_bytes_total",
        "netguard_drops_total",
        "netguard_alerts_total",
        "netguard_blocklist_entries",
        "netguard_flows_active",
        "netguard_ringbuf_events_lost_total",
        "netguard_ringbuf_events_over_budget_total",
        "netguard_parse_errors_total",
        "netguard_http_request_duration_seconds",
    ] {
        assert!(used.contains(topic), "no panel queries {topic}");
    }
    let all: Vec<String> = exprs(&d).into_iter().map(|(_, e)| e).collect();
    let has = |needle: &str| all.iter().any(|e| e.contains(needle));
    assert!(has("histogram_quantile(0.99"), "no p99 latency panel");
    assert!(
        has("status=~\"[45]..\"") || has("status=~\"5..\""),
        "no API error-rate panel"
    );
}

/// Checks tsc cannot make: the JSON import widens literal unions to `string` (see check/dashboard.ts).
#[test]
fn panels_use_known_types_and_the_datasource_variable() {
    const TYPES: [&str; 7] = [
        "row",
        "timeseries",
        "stat",
        "gauge",
        "bargauge",
        "table",
        "text",
    ];
    for (file, d) in dashboards() {
        let vars = d["templating"]["list"].as_array().expect("templating.list");
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{file}: needs a `datasource` variable of type datasource (query prometheus)"
        );
        let mut ids = BTreeSet::new();
        for p in panels(&d) {
            let ty = p["type"].as_str().unwrap_or_default();
            assert!(
                TYPES.contains(&ty),
                "{file}: panel {} has unknown type {ty:?}",
                p["title"]
            );
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{file}: duplicate panel id {}",
                p["id"]
            );
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(
                x + w <= 24,
                "{file}: panel {} overflows the 24-column grid",
                p["title"]
            );
            if ty == "row" {
                continue;
            }
            let sources = std::iter::once(&p["datasource"]).chain(
                p["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["datasource"]),
            );
            for ds in sources {
                assert_eq!(
                    ds["uid"], "${datasource}",
                    "{file}: panel {} bypasses $datasource",
                    p["title"]
                );
            }
        }
    }
}

/// Every expression goes through Prometheus's own parser (`promtool check rules` on recording rules
/// built from the panels), with Grafana's variables replaced by values Grafana would substitute.
#[test]
fn every_expression_is_valid_promql() {
    if !require_tool("promtool", "PromQL syntax check") {
        return;
    }
    let mut rules = Vec::new();
    for (file, d) in dashboards() {
        for (i, (title, expr)) in exprs(&d).into_iter().enumerate() {
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("$__range", "1h")
                .replace("$instance", ".*");
            assert!(
                !expr.contains('$'),
                "{file}/{title}: unsubstituted variable in {expr}"
            );
            rules.push(serde_json::json!({"record": format!("dashboard:check_{i}"), "expr": expr}));
        }
    }
    // JSON is YAML, so serde_json writes a rule file promtool reads.
    let doc = serde_json::json!({"groups": [{"name": "dashboards", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboards.rules.yml");
    fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    run(Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file));
}

#[test]
fn provisioning_points_at_prometheus_and_the_dashboard_folder() {
    let dir = dashboards_dir().join("provisioning");
    let ds = fs::read_to_string(dir.join("datasources/netguard.yaml")).unwrap();
    assert!(
        ds.contains("type: prometheus") && ds.contains("url: http://127.0.0.1:9090"),
        "{ds}"
    );
    let prov = fs::read_to_string(dir.join("dashboards/netguard.yaml")).unwrap();
    assert!(
        prov.contains("type: file") && prov.contains("path: "),
        "{prov}"
    );
}

#[test]
fn metric_name_extraction() {
    let h: BTreeSet<String> = ["netguard_http_request_duration_seconds".to_string()].into();
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(netguard_http_request_duration_seconds_bucket[1m]))) \
         / netguard_packets_total{a=\"b\"} + x_netguard_not_a_metric + netguard_foo_count",
        &h,
    );
    let want: BTreeSet<String> = [
        "netguard_http_request_duration_seconds",
        "netguard_packets_total",
        "netguard_foo_count",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, want);
}

//! `--log-format json`: the real daemon writes one JSON object per line (timestamp, level, target,
//! fields), and every line an API call causes carries that call's request id, so the id ties them
//! together and tells them apart from another call's.

use netguard_tests::{
    daemon::Daemon,
    netns::{NetnsPair, SENSOR_IF, require_root, run_in},
};

const TOKEN: &str = "logs-test-admin-token-0123456789";
const API: &str = "127.0.0.1:9771";

/// curl with our own request id; returns the response headers and body.
fn call(lab: &NetnsPair, id: &str, method: &str, path: &str, body: Option<&str>) -> String {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let rid = format!("x-request-id: {id}");
    let url = format!("http://{API}{path}");
    let mut args = vec![
        "curl", "-s", "-i", "-m", "5", "-X", method, "-H", &auth, "-H", &rid,
    ];
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    args.push(&url);
    let out = run_in(&lab.sensor, &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn json_logs_parse_and_a_request_id_ties_an_api_calls_lines_together() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("logs");
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start(&lab, state.path(), API, TOKEN, &["--log-format", "json"]);
    let added = call(
        &lab,
        "req-block-1",
        "POST",
        "/api/v1/blocklist",
        Some(r#"{"cidr":"198.51.100.7/32"}"#),
    );
    assert!(
        added
            .to_ascii_lowercase()
            .contains("x-request-id: req-block-1"),
        "the id is not echoed: {added}"
    );
    let health = call(&lab, "req-health-2", "GET", "/api/v1/health", None);
    assert!(health.contains("\"attached\":true"), "{health}");
    // A call without an id gets a generated one.
    let anon = call(&lab, "not an id!", "GET", "/api/v1/health", None);
    let generated = anon
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-request-id: ")
                .map(|v| v.trim().to_owned())
        })
        .expect("a generated id is echoed");
    assert_eq!(generated.len(), 16, "{anon}");
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);

    let mut lines = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\n--- whole log:\n{log}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "`{key}` missing: {line}");
        }
        lines.push(v);
    }
    assert!(lines.len() > 5, "{log}");
    let rid = |v: &serde_json::Value| {
        v.pointer("/span/request_id")
            .and_then(|x| x.as_str())
            .map(str::to_owned)
    };
    let of = |id: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|v| rid(v).as_deref() == Some(id))
            .collect()
    };
    let block = of("req-block-1");
    assert!(
        block.len() >= 2,
        "the block call's own line and its closing line should both carry its id: {block:?}"
    );
    let said = |v: &serde_json::Value| {
        v.pointer("/fields/message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        block
            .iter()
            .any(|v| said(v).contains("blocklist: 1 entry applied")),
        "{block:?}"
    );
    assert!(
        block
            .iter()
            .any(|v| said(v) == "api request" && v.pointer("/fields/status").is_some()),
        "{block:?}"
    );
    let health = of("req-health-2");
    assert!(!health.is_empty(), "the health call has no line");
    assert!(health.iter().all(|v| !said(v).contains("blocklist")));
    assert_eq!(of(&generated).len(), 1, "the generated id names its call");
    // Lines outside any request carry no id.
    assert!(
        lines
            .iter()
            .any(|v| said(v).contains("state store") && rid(v).is_none())
    );
}

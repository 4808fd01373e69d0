//! The multi-VM API (`/suspicious-ips`, `/statistics`, `/statistics/global`, `/feed`, `/vms`,
//! `/vms/{vm_id}`, `/vms/{vm_id}/attacks`, `/geo-attacks`) over real HTTP against a real stack: a
//! loaded XDP datapath, Control, and the store, once embedded and once on a real redis-server. Host
//! events are seeded through the store's `record_events`, alerts through `append_alert`, blocks through
//! the REST API and the control plane; every documented answer is asserted exactly (counts, order,
//! paging totals, filters, 400s naming the field, 404s, 401/403 per role).
//!
//! GeoIP: a GeoLite2-City-like database built by `netguard_tests::mmdb` (our own MaxMind DB writer) is
//! loaded into the stack and `/geo-attacks` is checked per country and city; without a database the
//! answer is 503 `geoip_unavailable`; the real `netguard run` with a bad `--geoip-db` path refuses to
//! start with a message naming the path, before it touches any interface, and with a good one serves
//! `/geo-attacks`.

use std::{
    net::IpAddr,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_common::tcp_flags as tf;
use netguard_store::{Alert, EntrySource, HostEventRecord, ListKind};
use netguard_tests::{
    api_stack::{ADMIN, AGENT, OPERATOR, Stack, StackOptions, VIEWER, http},
    daemon::{Daemon, netguard_bin},
    fixtures::{SEN, XDP_DROP, XDP_PASS, tcp},
    frames::FrameSpec,
    mmdb::{self, Writer},
    netns::{NetnsPair, require_root, run_in},
    redis_server::RedisServer,
};
use netguard_user::control::EntryRequest;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ME: &str = "sensor-a";
/// Addresses of the scenario (documentation ranges: nothing is ever sent to them).
const A: &str = "203.0.113.10";
const B: &str = "198.51.100.20";
const C: &str = "2001:db8::30";
const D: &str = "192.0.2.40";
const E: &str = "203.0.113.50";
const F: &str = "198.51.100.60";
const X: &str = "192.0.2.99";

fn ago(now: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    now - chrono::Duration::seconds(secs)
}

/// A host event as the store keeps it; `received_at` = `ts`, so the history's order (newest
/// received first) is the events' order.
fn event(
    ip: &str,
    vm: &str,
    user: &str,
    ts: DateTime<Utc>,
    failure: bool,
    service: &str,
) -> HostEventRecord {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let event_type = match (service, failure) {
        ("ssh", true) => "ssh_failed",
        ("ssh", false) => "ssh_accepted",
        (_, true) => "windows_4625",
        (_, false) => "windows_4624",
    };
    HostEventRecord {
        fingerprint: format!("{:064x}", SEQ.fetch_add(1, Ordering::Relaxed)),
        ts,
        received_at: ts,
        src_ip: ip.parse().unwrap(),
        username: Some(user.into()),
        src_port: Some(40_000),
        event_type: event_type.into(),
        service: service.into(),
        failure,
        source_vm_id: vm.into(),
    }
}

fn alert(id: &str, ip: &str, vm: &str, class: &str, ts: DateTime<Utc>, count: u32) -> Alert {
    Alert {
        id: id.into(),
        ts,
        sensor_id: vm.into(),
        class: class.into(),
        src_ip: ip.parse().unwrap(),
        dst_ip: None,
        dst_port: None,
        risk: 70,
        confidence: 0.9,
        mitre: "T1110".into(),
        action: "alerted".into(),
        evidence: Default::default(),
        count,
    }
}

/// Stores events oldest first (the history is newest-received first) and checks each is new.
async fn seed_events(s: &Stack, mut events: Vec<HostEventRecord>) {
    events.sort_by_key(|e| e.received_at);
    let fresh = s
        .control
        .store()
        .record_events(&events, Duration::from_secs(86_400))
        .await
        .expect("record_events");
    assert!(
        fresh.iter().all(|f| *f),
        "every seeded event is new: {fresh:?}"
    );
}

async fn call(
    s: &Stack,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http(token).request(method, s.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

/// GET as a viewer, expecting 200.
async fn get(s: &Stack, path: &str) -> Value {
    let (st, body) = call(s, Some(VIEWER), Method::GET, path, None).await;
    assert_eq!(st, 200, "GET {path}: {body}");
    body
}

/// Asserts a JSON error of `status` naming `field`.
async fn refused(
    s: &Stack,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
    field: Option<&str>,
) -> Value {
    let (st, b) = call(s, Some(token), method.clone(), path, body).await;
    assert_eq!(st.as_u16(), status, "{method} {path}: {b}");
    assert!(
        b["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{method} {path}: no error text: {b}"
    );
    match field {
        Some(f) => assert_eq!(b["field"], f, "{method} {path}: {b}"),
        None => assert!(b.get("field").is_none(), "{method} {path}: {b}"),
    }
    b
}

fn ips(v: &Value) -> Vec<&str> {
    v["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["ip"].as_str().unwrap())
        .collect()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn frame_from(src: &str) -> Vec<u8> {
    let IpAddr::V4(a) = src.parse::<IpAddr>().unwrap() else {
        panic!("v4 only")
    };
    FrameSpec::v4(a, SEN, tcp(40000, 22, tf::SYN as u8))
        .build()
        .bytes
}

async fn start(dir: &Path, redis: Option<&RedisServer>, geoip: Option<&Path>) -> Stack {
    let mut opts = StackOptions::default();
    opts.control.sensor_id = ME.into();
    opts.redis_url = redis.map(RedisServer::url);
    opts.api.geoip_db = geoip.map(Path::to_path_buf);
    Stack::start(dir, opts).await
}

/// The scenario, seeded at `now`:
/// - A: 4 failed ssh logins on vm-web (root, admin, root, test) and 1 on vm-db (oracle); one
///   ssh_brute_force alert from vm-web; blocked globally.
/// - B: 3 failed windows logins on vm-win (unregistered); blocked on vm-win (source event).
/// - C (IPv6): 2 failed logins on vm-web; blocked on vm-web.
/// - D: 1 failed login on vm-db, 3 hours ago.
/// - E: 1 successful login on vm-web. F: 1 failed login on vm-web 2 days ago (outside 24h).
/// - X: a port_scan alert (2 repeats) from this sensor.
async fn seed(s: &Stack, now: DateTime<Utc>) {
    let mut ev = vec![
        event(A, "vm-web", "root", ago(now, 600), true, "ssh"),
        event(A, "vm-web", "admin", ago(now, 540), true, "ssh"),
        event(A, "vm-web", "root", ago(now, 480), true, "ssh"),
        event(A, "vm-web", "test", ago(now, 420), true, "ssh"),
        event(A, "vm-db", "oracle", ago(now, 400), true, "ssh"),
        event(C, "vm-web", "root", ago(now, 200), true, "ssh"),
        event(C, "vm-web", "pi", ago(now, 100), true, "ssh"),
        event(D, "vm-db", "root", ago(now, 3 * 3600), true, "ssh"),
        event(E, "vm-web", "alice", ago(now, 60), false, "ssh"),
        event(F, "vm-web", "root", ago(now, 2 * 86_400), true, "ssh"),
    ];
    for (i, t) in [300, 290, 280].into_iter().enumerate() {
        ev.push(event(
            B,
            "vm-win",
            "Administrator",
            ago(now, t - i as i64),
            true,
            "windows",
        ));
    }
    seed_events(s, ev).await;
    let store = s.control.store();
    store
        .append_alert(&alert("al-x", X, ME, "port_scan", ago(now, 650), 2))
        .await
        .unwrap();
    store
        .append_alert(&alert(
            "al-a",
            A,
            "vm-web",
            "ssh_brute_force",
            ago(now, 410),
            1,
        ))
        .await
        .unwrap();
    for vm in ["vm-web", "vm-db"] {
        let (st, b) = call(
            s,
            Some(OPERATOR),
            Method::POST,
            "/api/v1/vms",
            Some(json!({"id": vm})),
        )
        .await;
        assert_eq!(st, 201, "{b}");
    }
    let (st, b) = call(
        s,
        Some(OPERATOR),
        Method::POST,
        "/api/v1/blocklist",
        Some(json!({"cidr": A, "reason": "brute force"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = call(
        s,
        Some(OPERATOR),
        Method::POST,
        "/api/v1/block/per-vm",
        Some(json!({"ip": C, "vm_id": "vm-web"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let req = EntryRequest {
        cidr: B.into(),
        scope: Some("vm-win".into()),
        reason: Some("per-VM threshold".into()),
        ..EntryRequest::default()
    };
    s.control
        .put(ListKind::Block, &[req], EntrySource::Event)
        .await
        .unwrap();
}

mod geo;
mod routes;
mod vms;

use routes::{feed, statistics, suspicious_ips, vm_attacks};
use vms::{roles, vms};

async fn scenario(redis: Option<&RedisServer>) {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), redis, None).await;
    let now = Utc::now();
    seed(&s, now).await;
    suspicious_ips(&s, now).await;
    statistics(&s).await;
    feed(&s).await;
    vm_attacks(&s).await;
    roles(&s).await;
    vms(&s).await;
    // No database: a 503 that says what to do.
    let e = refused(
        &s,
        VIEWER,
        Method::GET,
        "/api/v1/geo-attacks",
        None,
        503,
        None,
    )
    .await;
    assert_eq!(e["code"], "geoip_unavailable");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("--geoip-db") && msg.contains("GeoLite2-City"),
        "{msg}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented_on_the_embedded_store() {
    if !require_root() {
        return;
    }
    scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented_on_redis() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    scenario(Some(&redis)).await;
}

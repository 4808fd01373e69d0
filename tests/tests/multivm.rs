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

async fn suspicious_ips(s: &Stack, now: DateTime<Utc>) {
    let all = get(s, "/api/v1/suspicious-ips").await;
    assert_eq!(all["total"], 5, "{all}");
    assert_eq!(
        (all["offset"].as_u64(), all["limit"].as_u64()),
        (Some(0), Some(100))
    );
    assert_eq!(
        ips(&all),
        [A, B, C, D, X],
        "most failures first; alerts break the tie at 0"
    );
    let a = &all["ips"][0];
    assert_eq!(
        (a["failures"].as_u64(), a["alerts"].as_u64()),
        (Some(5), Some(1)),
        "{a}"
    );
    assert_eq!(strs(&a["vms"]), ["vm-db", "vm-web"]);
    assert_eq!(strs(&a["usernames"]), ["admin", "oracle", "root", "test"]);
    assert_eq!(a["usernames_total"], 4);
    assert_eq!(strs(&a["services"]), ["ssh"]);
    assert_eq!(a["alert_classes"], json!({"ssh_brute_force": 1}));
    assert_eq!(
        (a["blocked"].as_bool(), strs(&a["block_scopes"])),
        (Some(true), vec!["global"])
    );
    let t = |v: &Value| {
        DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(t(&a["first_seen"]).timestamp(), ago(now, 600).timestamp());
    assert_eq!(t(&a["last_seen"]).timestamp(), ago(now, 400).timestamp());
    let b = &all["ips"][1];
    assert_eq!(
        (b["failures"].as_u64(), strs(&b["services"])),
        (Some(3), vec!["windows"])
    );
    assert_eq!(strs(&b["block_scopes"]), ["vm-win"]);
    assert_eq!(strs(&all["ips"][2]["block_scopes"]), ["vm-web"]);
    assert_eq!(all["ips"][3]["blocked"], false);
    let x = &all["ips"][4];
    assert_eq!(
        (x["failures"].as_u64(), x["alerts"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(
        (strs(&x["vms"]), x["alert_classes"].clone()),
        (vec![ME], json!({"port_scan": 2}))
    );

    let page = get(s, "/api/v1/suspicious-ips?limit=2&offset=1").await;
    assert_eq!((page["total"].as_u64(), ips(&page)), (Some(5), vec![B, C]));
    let page = get(s, "/api/v1/suspicious-ips?limit=0").await;
    assert_eq!((page["total"].as_u64(), ips(&page).len()), (Some(5), 0));
    let web = get(s, "/api/v1/suspicious-ips?vm_id=vm-web").await;
    assert_eq!((web["total"].as_u64(), ips(&web)), (Some(2), vec![A, C]));
    assert_eq!(
        (
            web["ips"][0]["failures"].as_u64(),
            strs(&web["ips"][0]["vms"])
        ),
        (Some(4), vec!["vm-web"])
    );
    let many = get(s, "/api/v1/suspicious-ips?min_failures=3").await;
    assert_eq!(ips(&many), [A, B]);
    let hour = get(s, "/api/v1/suspicious-ips?since=1h").await;
    assert_eq!(ips(&hour), [A, B, C, X], "D failed 3 hours ago");
    let since =
        (now - chrono::Duration::hours(4)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let four = get(s, &format!("/api/v1/suspicious-ips?since={since}")).await;
    assert_eq!(four["total"], 5);
    let week = get(s, "/api/v1/suspicious-ips?since=7d").await;
    assert_eq!(
        ips(&week),
        [A, B, C, D, F, X],
        "F failed 2 days ago, D 3 hours ago"
    );

    for (q, field) in [
        ("since=soon", "since"),
        ("since=0s", "since"),
        ("limit=10001", "limit"),
        ("offset=-1", "offset"),
        ("min_failures=-1", "min_failures"),
        ("vm_id=global", "vm_id"),
        ("vm_id=a%20b", "vm_id"),
    ] {
        refused(
            s,
            VIEWER,
            Method::GET,
            &format!("/api/v1/suspicious-ips?{q}"),
            None,
            400,
            Some(field),
        )
        .await;
    }
}

async fn statistics(s: &Stack) {
    let me = get(s, "/api/v1/statistics").await;
    assert_eq!(
        (me["vm_id"].as_str(), me["this_sensor"].as_bool()),
        (Some(ME), Some(true))
    );
    assert_eq!(
        (
            me["failed_logins"].as_u64(),
            me["successful_logins"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(
        (me["alerts"].as_u64(), me["unique_attacker_ips"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(me["alerts_by_class"], json!({"port_scan": 2}));
    assert_eq!(
        me["blocks_active"],
        json!({"total": 1, "manual": 1, "auto": 0, "feed": 0, "event": 0}),
        "only the global block applies here"
    );

    let web = get(s, "/api/v1/statistics?vm_id=vm-web").await;
    assert_eq!(web["this_sensor"], false);
    assert_eq!(
        (
            web["failed_logins"].as_u64(),
            web["successful_logins"].as_u64()
        ),
        (Some(6), Some(1))
    );
    assert_eq!(
        (web["unique_attacker_ips"].as_u64(), web["alerts"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        web["blocks_active"],
        json!({"total": 2, "manual": 2, "auto": 0, "feed": 0, "event": 0})
    );
    let win = get(s, "/api/v1/statistics?vm_id=vm-win&since=1h").await;
    assert_eq!(
        (
            win["failed_logins"].as_u64(),
            win["unique_attacker_ips"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(
        win["blocks_active"],
        json!({"total": 2, "manual": 1, "auto": 0, "feed": 0, "event": 1})
    );
    let db_hour = get(s, "/api/v1/statistics?vm_id=vm-db&since=1h").await;
    assert_eq!(
        db_hour["failed_logins"], 1,
        "D's failure is 3 hours old: {db_hour}"
    );
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/statistics?vm_id=global",
        None,
        400,
        Some("vm_id"),
    )
    .await;
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/statistics?since=x",
        None,
        400,
        Some("since"),
    )
    .await;

    let g = get(s, "/api/v1/statistics/global").await;
    assert_eq!(
        (g["failed_logins"].as_u64(), g["successful_logins"].as_u64()),
        (Some(11), Some(1))
    );
    assert_eq!(
        (g["unique_attacker_ips"].as_u64(), g["alerts"].as_u64()),
        (Some(5), Some(3))
    );
    assert_eq!(
        g["alerts_by_class"],
        json!({"port_scan": 2, "ssh_brute_force": 1})
    );
    assert_eq!(
        g["blocks_active"],
        json!({"total": 3, "manual": 2, "auto": 0, "feed": 0, "event": 1})
    );
    assert_eq!(g["global_blocks"], 1);
    let vms: Vec<(&str, bool, u64, u64, u64, u64, u64)> = g["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let n = |k: &str| v[k].as_u64().unwrap();
            (
                v["vm_id"].as_str().unwrap(),
                v["registered"].as_bool().unwrap(),
                n("failed_logins"),
                n("successful_logins"),
                n("unique_attacker_ips"),
                n("alerts"),
                n("scoped_blocks"),
            )
        })
        .collect();
    // On a shared store the daemon registers itself in the fleet registry (its never-block refresh
    // publishes its addresses there, for the other sensors), so it is listed as registered.
    let shared = s.control.store().backend_name() != "embedded";
    assert_eq!(
        vms,
        [
            (ME, shared, 0, 0, 1, 2, 0),
            ("vm-db", true, 2, 0, 2, 0, 0),
            ("vm-web", true, 6, 1, 2, 1, 1),
            ("vm-win", false, 3, 0, 1, 0, 1),
        ]
    );
    assert_eq!(ips(&json!({"ips": g["top_attackers"]})), [A, B, C, D, X]);
    let top = get(s, "/api/v1/statistics/global?top=2&since=1h").await;
    assert_eq!(ips(&json!({"ips": top["top_attackers"]})), [A, B]);
    assert_eq!(top["failed_logins"], 10);
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/statistics/global?top=0",
        None,
        400,
        Some("top"),
    )
    .await;
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/statistics/global?top=101",
        None,
        400,
        Some("top"),
    )
    .await;
}

fn kinds(feed: &Value) -> Vec<&str> {
    feed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect()
}

async fn feed(s: &Stack) {
    let all = get(s, "/api/v1/feed").await;
    // 12 events in 24h (F is older), 2 alerts, 3 blocks.
    assert_eq!(all["total"], 17, "{all}");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 17);
    let ts: Vec<&str> = items.iter().map(|i| i["ts"].as_str().unwrap()).collect();
    let parsed: Vec<DateTime<Utc>> = ts.iter().map(|t| t.parse().unwrap()).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {ts:?}"
    );
    assert_eq!(
        kinds(&all)[..3],
        ["block", "block", "block"],
        "the blocks were made last"
    );
    for i in items {
        let kind = i["type"].as_str().unwrap();
        for k in ["event", "alert", "block"] {
            assert_eq!(
                i.get(k).is_some(),
                k == kind,
                "exactly the `{kind}` object: {i}"
            );
        }
    }
    let success = items.iter().find(|i| i["src"] == E).unwrap();
    assert_eq!(
        success["summary"],
        format!("successful ssh login for alice from {E} on vm-web (ssh_accepted)")
    );
    assert_eq!(success["event"]["failure"], false);
    let global = items
        .iter()
        .find(|i| i["type"] == "block" && i["src"] == format!("{A}/32"))
        .unwrap();
    assert_eq!(
        (global["vm_id"].clone(), global["block"]["scope"].clone()),
        (Value::Null, json!("global"))
    );

    // Pages tile the feed exactly.
    let mut paged = Vec::new();
    for offset in (0..17).step_by(5) {
        let p = get(s, &format!("/api/v1/feed?limit=5&offset={offset}")).await;
        assert_eq!(p["total"], 17);
        paged.extend(p["items"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(&paged, items);

    let alerts = get(s, "/api/v1/feed?type=alert").await;
    assert_eq!(
        (alerts["total"].as_u64(), kinds(&alerts)),
        (Some(2), vec!["alert", "alert"])
    );
    assert_eq!(
        alerts["items"][0]["alert"]["id"], "al-a",
        "410 s ago is newer than 650 s ago"
    );
    let mixed = get(s, "/api/v1/feed?type=event,block").await;
    assert_eq!(mixed["total"], 15);
    let win = get(s, "/api/v1/feed?vm_id=vm-win").await;
    assert_eq!(
        (win["total"].as_u64(), kinds(&win)),
        (Some(4), vec!["block", "event", "event", "event"])
    );
    let hour = get(s, "/api/v1/feed?since=1h&type=event").await;
    assert_eq!(hour["total"], 11, "D's event is 3 hours old");
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/feed?type=flows",
        None,
        400,
        Some("type"),
    )
    .await;
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/feed?limit=x",
        None,
        400,
        Some("limit"),
    )
    .await;
}

async fn vm_attacks(s: &Stack) {
    let web = get(s, "/api/v1/vms/vm-web/attacks?limit=3").await;
    // 6 failed logins and 1 alert; the successful login is not an attack.
    assert_eq!(
        (
            web["total"].as_u64(),
            web["items"].as_array().unwrap().len()
        ),
        (Some(7), 3)
    );
    let all = get(s, "/api/v1/vms/vm-web/attacks").await;
    assert_eq!(all["items"][0]["src"], C, "C's last failure is the newest");
    assert_eq!(kinds(&all).iter().filter(|k| **k == "alert").count(), 1);
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["vm_id"] == "vm-web" && i["src"] != E)
    );
    // Unregistered, but it has events.
    let win = get(s, "/api/v1/vms/vm-win/attacks").await;
    assert_eq!(win["total"], 3);
    // This sensor is always known.
    let me = get(s, &format!("/api/v1/vms/{ME}/attacks")).await;
    assert_eq!((me["total"].as_u64(), kinds(&me)), (Some(1), vec!["alert"]));
    let db = get(s, "/api/v1/vms/vm-db/attacks?since=1h").await;
    assert_eq!(db["total"], 1);
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/vms/vm-nope/attacks",
        None,
        404,
        Some("vm_id"),
    )
    .await;
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/vms/global/attacks",
        None,
        400,
        Some("vm_id"),
    )
    .await;
    refused(
        s,
        VIEWER,
        Method::GET,
        "/api/v1/vms/vm-web/attacks?offset=1000000001",
        None,
        400,
        Some("offset"),
    )
    .await;
}

async fn vms(s: &Stack) {
    let list = get(s, "/api/v1/vms").await;
    assert_eq!(list["total"], 4, "{list}");
    let ids: Vec<&str> = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ME, "vm-db", "vm-web", "vm-win"]);
    let vm = |id: &str| {
        list["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .unwrap()
            .clone()
    };
    let me = vm(ME);
    // On a shared store the daemon registered itself in the fleet registry at start (its
    // never-block refresh publishes its addresses there for the other sensors).
    let shared = s.control.store().backend_name() != "embedded";
    assert_eq!(
        (me["this_sensor"].as_bool(), me["registered"].as_bool()),
        (Some(true), Some(shared))
    );
    assert_eq!(me["alerts_24h"].as_u64(), Some(2));
    assert_eq!(me["registered_at"].is_null(), !shared, "{me}");
    let web = vm("vm-web");
    assert_eq!(
        (web["registered"].as_bool(), web["failures_24h"].as_u64()),
        (Some(true), Some(6))
    );
    assert_eq!(
        (
            web["alerts_24h"].as_u64(),
            web["active_scoped_blocks"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let win = vm("vm-win");
    assert_eq!(
        (
            win["registered"].as_bool(),
            win["active_scoped_blocks"].as_u64()
        ),
        (Some(false), Some(1))
    );
    assert_eq!(win["failures_24h"], 3);
    // last_seen: the newest stored event's reception (E's success, 60 s ago, for vm-web).
    let age = |v: &Value| {
        let seen: DateTime<Utc> = v["last_seen"].as_str().unwrap().parse().unwrap();
        (Utc::now() - seen).num_seconds()
    };
    assert!((59..120).contains(&age(&web)), "{web}");
    // vm-db: A's failure 400 s ago is its newest event (D's is 3 hours old).
    let db = vm("vm-db");
    assert!((399..460).contains(&age(&db)), "{db}");
    let page = get(s, "/api/v1/vms?limit=2&offset=2").await;
    let ids: Vec<&str> = page["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (page["total"].as_u64(), ids),
        (Some(4), vec!["vm-web", "vm-win"])
    );

    // Registration: 201 new, 200 existing (updated, registered_at kept).
    let reg = json!({"id": "vm-new", "name": "New VM", "description": "test box", "tags": ["prod", "eu"]});
    let (st, v) = call(s, Some(OPERATOR), Method::POST, "/api/v1/vms", Some(reg)).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (
            v["id"].as_str(),
            v["name"].as_str(),
            v["description"].as_str()
        ),
        (Some("vm-new"), Some("New VM"), Some("test box"))
    );
    assert_eq!(
        (strs(&v["tags"]), v["registered"].as_bool()),
        (vec!["eu", "prod"], Some(true))
    );
    let first = v["registered_at"].clone();
    let (st, v2) = call(
        s,
        Some(OPERATOR),
        Method::POST,
        "/api/v1/vms",
        Some(json!({"id": "vm-new", "name": "Renamed"})),
    )
    .await;
    assert_eq!(st, 200, "{v2}");
    assert_eq!(
        (v2["name"].as_str(), v2["registered_at"].clone()),
        (Some("Renamed"), first)
    );
    assert!(
        v2["tags"].as_array().unwrap().is_empty() && v2["description"].is_null(),
        "replaced: {v2}"
    );
    assert_eq!(get(s, "/api/v1/vms").await["total"], 5);

    for (body, status, field) in [
        (json!({"id": "global"}), 400, "id"),
        (json!({"id": "a b"}), 400, "id"),
        (json!({"id": "x".repeat(129)}), 400, "id"),
        (
            json!({"id": "vm-x", "tags": ["ok", "no,comma"]}),
            400,
            "tags[1]",
        ),
        (json!({"id": "vm-x", "name": "n".repeat(129)}), 400, "name"),
        (json!({"id": "vm-x", "colour": "red"}), 422, "colour"),
        (json!({"name": "no id"}), 422, "id"),
        (json!({"id": 5}), 422, "id"),
    ] {
        refused(
            s,
            OPERATOR,
            Method::POST,
            "/api/v1/vms",
            Some(body),
            status,
            Some(field),
        )
        .await;
    }
    let resp = http(Some(OPERATOR))
        .post(s.url("/api/v1/vms"))
        .body("{\"id\":\"vm-x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(
        get(s, "/api/v1/vms").await["total"],
        5,
        "refused registrations stored nothing"
    );

    // Unregistering keeps the VM's scoped blocks unless asked.
    refused(
        s,
        OPERATOR,
        Method::DELETE,
        "/api/v1/vms/vm-nope",
        None,
        404,
        Some("vm_id"),
    )
    .await;
    refused(
        s,
        OPERATOR,
        Method::DELETE,
        "/api/v1/vms/vm-win",
        None,
        404,
        Some("vm_id"),
    )
    .await;
    refused(
        s,
        OPERATOR,
        Method::DELETE,
        "/api/v1/vms/global",
        None,
        400,
        Some("vm_id"),
    )
    .await;
    refused(
        s,
        OPERATOR,
        Method::DELETE,
        "/api/v1/vms/vm-web?remove_blocks=maybe",
        None,
        400,
        Some("remove_blocks"),
    )
    .await;
    let (st, r) = call(
        s,
        Some(OPERATOR),
        Method::DELETE,
        "/api/v1/vms/vm-web",
        None,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r,
        json!({"id": "vm-web", "removed": true, "scoped_blocks_removed": 0, "scoped_blocks_remaining": 1})
    );
    let blocked = get(s, "/api/v1/blocklist").await.to_string();
    assert!(
        blocked.contains("\"scope\":\"vm-web\""),
        "the scoped block stays: {blocked}"
    );
    refused(
        s,
        OPERATOR,
        Method::DELETE,
        "/api/v1/vms/vm-web",
        None,
        404,
        Some("vm_id"),
    )
    .await;
    // Still listed (it has events), but no longer registered.
    let list = get(s, "/api/v1/vms").await;
    let web = list["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "vm-web")
        .unwrap();
    assert_eq!(
        (web["registered"].as_bool(), web["name"].clone()),
        (Some(false), Value::Null)
    );

    // remove_blocks=true removes them through the control plane, down to the kernel: a block scoped
    // to this sensor drops D's frames until its VM entry is removed with its blocks.
    let (st, _) = call(
        s,
        Some(OPERATOR),
        Method::POST,
        "/api/v1/vms",
        Some(json!({"id": ME})),
    )
    .await;
    // 200 on a shared store: the daemon registered itself there at start.
    let shared = s.control.store().backend_name() != "embedded";
    assert_eq!(st, if shared { 200 } else { 201 });
    let (st, b) = call(
        s,
        Some(OPERATOR),
        Method::POST,
        "/api/v1/block/per-vm",
        Some(json!({"ip": D, "vm_id": ME})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(s.verdict(&frame_from(D)), XDP_DROP);
    let (st, r) = call(
        s,
        Some(OPERATOR),
        Method::DELETE,
        &format!("/api/v1/vms/{ME}?remove_blocks=true"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r,
        json!({"id": ME, "removed": true, "scoped_blocks_removed": 1, "scoped_blocks_remaining": 0})
    );
    assert_eq!(
        s.verdict(&frame_from(D)),
        XDP_PASS,
        "the scoped block left the kernel"
    );
    assert_eq!(
        s.verdict(&frame_from(A)),
        XDP_DROP,
        "the global block is untouched"
    );
}

async fn roles(s: &Stack) {
    let reads = [
        "/api/v1/suspicious-ips",
        "/api/v1/statistics",
        "/api/v1/statistics/global",
        "/api/v1/feed",
        "/api/v1/vms",
        "/api/v1/vms/vm-db/attacks",
        "/api/v1/geo-attacks",
    ];
    for path in reads {
        refused(s, AGENT, Method::GET, path, None, 403, None).await;
        let (st, _) = call(s, None, Method::GET, path, None).await;
        assert_eq!(st, 401, "{path} without a token");
    }
    for token in [VIEWER, AGENT] {
        refused(
            s,
            token,
            Method::POST,
            "/api/v1/vms",
            Some(json!({"id": "vm-r"})),
            403,
            None,
        )
        .await;
        refused(
            s,
            token,
            Method::DELETE,
            "/api/v1/vms/vm-db",
            None,
            403,
            None,
        )
        .await;
    }
    let (st, _) = call(s, Some(ADMIN), Method::GET, "/api/v1/vms", None).await;
    assert_eq!(st, 200);
    assert_eq!(
        get(s, "/api/v1/vms").await["vms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["id"] == "vm-r")
            .count(),
        0
    );
}

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

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// A GeoLite2-City-like database: GB (London inside), SE, DE (Berlin inside) over IPv4 and IPv6.
fn geo_db(path: &Path) {
    let mut w = Writer::new("GeoLite2-City", 6).build_epoch(1_714_521_600);
    w.insert(
        net("81.2.0.0/16"),
        mmdb::country_record("GB", "United Kingdom"),
    )
    .insert(
        net("81.2.69.0/24"),
        mmdb::city_record("GB", "United Kingdom", "London"),
    )
    .insert(net("89.160.20.0/24"), mmdb::country_record("SE", "Sweden"))
    .insert(net("2a02:d8c0::/29"), mmdb::country_record("DE", "Germany"))
    .insert(
        net("2a02:d8c0:1::/48"),
        mmdb::city_record("DE", "Germany", "Berlin"),
    );
    w.write(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_attacks_count_per_country_and_city() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoLite2-City.mmdb");
    geo_db(&db);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let s = start(&state, None, Some(&db)).await;
    let now = Utc::now();
    let f = |ip: &str, vm: &str, t: i64| event(ip, vm, "root", ago(now, t), true, "ssh");
    seed_events(
        &s,
        vec![
            f("81.2.69.10", "vm-uk", 100),
            f("81.2.69.10", "vm-uk", 99),
            f("81.2.69.10", "vm-uk", 98),
            f("81.2.70.1", "vm-uk", 97),
            f("89.160.20.5", "vm-uk", 96),
            f("89.160.20.5", "vm-uk", 95),
            f("2a02:d8c0:1::7", "vm-de", 94),
            f("2a02:d8c0:1::7", "vm-de", 93),
            f("2a02:d8c0:9::1", "vm-de", 92),
            // Private, and public but not in the database: both "unknown".
            f("10.0.0.5", "vm-uk", 91),
            f("198.51.100.1", "vm-uk", 90),
            // A success is not an attack; an old failure is outside the window.
            event("81.2.69.11", "vm-uk", "alice", ago(now, 89), false, "ssh"),
            f("89.160.20.6", "vm-uk", 2 * 86_400),
        ],
    )
    .await;
    s.control
        .store()
        .append_alert(&alert(
            "geo-al",
            "89.160.20.5",
            ME,
            "port_scan",
            ago(now, 50),
            1,
        ))
        .await
        .unwrap();

    let g = get(&s, "/api/v1/geo-attacks").await;
    assert_eq!(
        g["database"],
        json!({"database_type": "GeoLite2-City", "build_epoch": 1_714_521_600})
    );
    assert_eq!(
        (g["total_attacks"].as_u64(), g["unique_ips"].as_u64()),
        (Some(12), Some(7)),
        "{g}"
    );
    let rows: Vec<(&str, &str, u64, u64, u64, u64)> = g["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n = |k: &str| c[k].as_u64().unwrap();
            (
                c["country_code"].as_str().unwrap(),
                c["country"].as_str().unwrap(),
                n("attacks"),
                n("failed_logins"),
                n("alerts"),
                n("unique_ips"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("GB", "United Kingdom", 4, 4, 0, 2),
            ("DE", "Germany", 3, 3, 0, 2),
            ("SE", "Sweden", 3, 2, 1, 1),
            ("unknown", "unknown", 2, 2, 0, 2),
        ]
    );
    assert_eq!(
        g["countries"][0]["cities"],
        json!([{"city": "London", "attacks": 3, "unique_ips": 1}])
    );
    assert_eq!(
        g["countries"][1]["cities"],
        json!([{"city": "Berlin", "attacks": 2, "unique_ips": 1}])
    );
    assert_eq!(g["countries"][2]["cities"], json!([]));

    let de = get(&s, "/api/v1/geo-attacks?vm_id=vm-de").await;
    assert_eq!(
        (
            de["total_attacks"].as_u64(),
            de["countries"].as_array().unwrap().len()
        ),
        (Some(3), 1)
    );
    assert_eq!(de["countries"][0]["country_code"], "DE");
    // With the 2-day-old failure SE ties GB at 4: equal counts are ordered by country code.
    let week = get(&s, "/api/v1/geo-attacks?since=7d").await;
    let codes: Vec<&str> = week["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["country_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["GB", "SE", "DE", "unknown"], "{week}");
    assert_eq!(week["countries"][1]["attacks"], 4);
    refused(
        &s,
        VIEWER,
        Method::GET,
        "/api/v1/geo-attacks?since=later",
        None,
        400,
        Some("since"),
    )
    .await;
    refused(
        &s,
        AGENT,
        Method::GET,
        "/api/v1/geo-attacks",
        None,
        403,
        None,
    )
    .await;
    s.stop().await;
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn bad_geoip_db_stops_the_daemon_before_it_attaches() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"this is not a MaxMind database").unwrap();
    let missing = dir.path().join("missing.mmdb");
    for (path, says) in [
        (&missing, "No such file"),
        (&junk, "not a valid MaxMind DB"),
    ] {
        // An interface that does not exist: even if the GeoIP check were skipped, nothing could be
        // attached; the message must be the GeoIP one, which comes first.
        let out = Command::new(netguard_bin())
            .args(["run", "--iface", "ng-no-such-if0", "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--geoip-db")
            .arg(path)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains(&path.display().to_string()) && text.contains(says),
            "{text}"
        );
        assert!(
            text.contains("--geoip-db") && text.contains("GeoLite2-City"),
            "{text}"
        );
        assert!(
            !text.contains("ng-no-such-if0"),
            "failed at the interface, not the database: {text}"
        );
    }
}

#[test]
fn daemon_serves_geo_attacks_from_geoip_db() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("geoip");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoLite2-City.mmdb");
    geo_db(&db);
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let token = "multivm-geoip-admin-token-0123456789";
    let daemon = Daemon::start(
        &lab,
        &state,
        "127.0.0.1:9751",
        token,
        &["--geoip-db", db.to_str().unwrap()],
    );
    let g = daemon.get_json("/api/v1/geo-attacks");
    assert_eq!(g["database"]["database_type"], "GeoLite2-City", "{g}");
    assert_eq!(
        (g["total_attacks"].as_u64(), g["countries"].clone()),
        (Some(0), json!([]))
    );

    // Events posted the way agents post them reach /geo-attacks and /suspicious-ips (3 failures stay
    // under the default thresholds, so nothing else changes).
    let now = Utc::now();
    let ts = |s: i64| ago(now, s).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = json!([
        {"source_vm_id": "agent-uk", "ts": ts(30), "src_ip": "81.2.69.10", "username": "Administrator", "src_port": 50001, "event_type": "windows_4625"},
        {"source_vm_id": "agent-uk", "ts": ts(20), "src_ip": "81.2.69.10", "username": "Administrator", "src_port": 50002, "event_type": "windows_4625"},
        {"source_vm_id": "agent-uk", "ts": ts(10), "src_ip": "81.2.69.10", "username": "admin", "src_port": 50003, "event_type": "windows_4625"},
        {"source_vm_id": "agent-de", "ts": ts(5), "src_ip": "2a02:d8c0:1::7", "username": "root", "src_port": 50004, "event_type": "ssh_failed"},
    ]);
    let out = run_in(
        &lab.sensor,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            "http://127.0.0.1:9751/api/v1/events",
        ],
    );
    let posted: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "POST /events: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(posted["accepted"], 4, "{posted}");
    let g = daemon.get_json("/api/v1/geo-attacks");
    let rows: Vec<(String, u64)> = g["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["country_code"].as_str().unwrap().to_owned(),
                c["attacks"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("GB".to_owned(), 3), ("DE".to_owned(), 1)], "{g}");
    assert_eq!(
        g["countries"][0]["cities"],
        json!([{"city": "London", "attacks": 3, "unique_ips": 1}])
    );
    let sus = daemon.get_json("/api/v1/suspicious-ips");
    assert_eq!(sus["total"], 2, "{sus}");
    assert_eq!(sus["ips"][0]["ip"], "81.2.69.10");
    assert_eq!(sus["ips"][0]["vms"], json!(["agent-uk"]));
    assert_eq!(sus["ips"][0]["services"], json!(["windows"]));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("GeoIP") && log.contains("GeoLite2-City"),
        "{log}"
    );
}

//! `POST /api/v1/events` and `/api/v1/thresholds` over real HTTP against a real stack (a loaded XDP
//! datapath, Control, and the embedded store or a real redis-server), with every block checked in
//! the kernel by BPF_PROG_TEST_RUN:
//! - single and array posts, per-item rejection that keeps the good items, a retried batch
//!   acknowledged as duplicates and stored once (checked in the store's event history);
//! - agent tokens: may post, get 403 on the blocklist and thresholds, tag `source_vm_id` with their
//!   VM, and a request with an event for another VM is refused whole (403); a config with an agent
//!   token that names no VM stops the real `netguard run` before it attaches, naming the token;
//! - the per-token rate limit: 429 with `Retry-After` and the error shape, one token's budget not
//!   touching another's;
//! - thresholds GET/PUT round trip and field-named validation;
//! - on two sensors sharing a Redis: a per-VM threshold blocks the source on that VM only, a global
//!   threshold everywhere, each on exactly the N-th failure; ten failures from one VM's agent block
//!   on that VM only, and one more from a second VM blocks everywhere; the alert is pushed on the
//!   WebSocket channel with class and MITRE id; an allowlisted source is alerted, not blocked.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netguard_common::tcp_flags as tf;
use netguard_store::{EventQuery, ListKind, StoreOptions};
use netguard_tests::{
    api_stack::{ADMIN, AGENT, AGENT_VM, OPERATOR, Stack, StackOptions, VIEWER, http},
    fixtures::{SEN, XDP_DROP, XDP_PASS, load_small, tcp},
    frames::FrameSpec,
    netns::require_root,
    redis_server::RedisServer,
};
use netguard_user::{
    api::{Role, TokenConfig},
    control::{Control, ControlConfig, PushEvent},
    datapath::Datapath,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const BOUND_AGENT: &str = "bound-agent-token-for-tests-0123";
/// VMs that have an agent token of their own in [`stack`] (see [`agent_of`]).
const AGENT_VMS: [&str; 4] = ["win-1", "win-2", "win-3", "sensor-b"];

/// The token of the agent on `vm` (one of [`AGENT_VMS`]).
fn agent_of(vm: &str) -> String {
    format!("agent-token-of-{vm}-0123456789")
}

fn frame_from(src: Ipv4Addr) -> Vec<u8> {
    FrameSpec::v4(src, SEN, tcp(40000, 22, tf::SYN as u8))
        .build()
        .bytes
}

fn verdict(dp: &Arc<Mutex<Datapath>>, src: Ipv4Addr) -> u32 {
    dp.lock()
        .unwrap()
        .test_run(&frame_from(src))
        .expect("test run")
}

async fn call(
    stack: &Stack,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http(Some(token)).request(method, stack.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

async fn post_events(stack: &Stack, token: &str, body: Value) -> (StatusCode, Value) {
    call(stack, token, Method::POST, "/api/v1/events", Some(body)).await
}

/// A stack for sensor `id` whose tokens include an agent bound to VM `win-7`, and one for each of
/// [`AGENT_VMS`].
async fn stack(dir: &std::path::Path, id: &str, redis: Option<&RedisServer>) -> Stack {
    stack_with(dir, id, redis, StackOptions::default()).await
}

async fn stack_with(
    dir: &std::path::Path,
    id: &str,
    redis: Option<&RedisServer>,
    opts: StackOptions,
) -> Stack {
    let mut opts = StackOptions {
        redis_url: redis.map(RedisServer::url),
        ..opts
    };
    for vm in AGENT_VMS {
        opts.api.tokens.push(TokenConfig {
            name: format!("{vm}-agent"),
            role: Role::Agent,
            token: agent_of(vm),
            vm_id: Some(vm.into()),
        });
    }
    opts.control.sensor_id = id.into();
    opts.api.tokens.push(TokenConfig {
        name: "win-7-agent".into(),
        role: Role::Agent,
        token: BOUND_AGENT.into(),
        vm_id: Some("win-7".into()),
    });
    Stack::start(dir, opts).await
}

fn event(n: u32, vm: &str, src: &str, ty: &str) -> Value {
    json!({"source_vm_id": vm, "ts": 1_714_560_000_000u64 + u64::from(n) * 1000, "src_ip": src,
           "username": format!("user{n}"), "src_port": 40_000 + n, "event_type": ty})
}

/// Events posted "now" (the tracker ignores failures older than the find time).
fn now_event(n: u32, vm: &str, src: &str, ty: &str) -> Value {
    let ts = chrono::Utc::now().timestamp_millis() as u64 - 10_000 + u64::from(n);
    json!({"source_vm_id": vm, "ts": ts, "src_ip": src, "username": "root", "src_port": 40_000 + n,
           "event_type": ty})
}

async fn rest_contract(redis: Option<&RedisServer>) {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(dir.path(), "sensor-a", redis).await;
    // Thresholds out of reach: this test is about acknowledgement and counting, not blocking.
    let mut th = s.state.events.thresholds();
    th.per_vm.max_retry = 1000;
    th.global.max_retry = 1000;
    s.state
        .events
        .set_thresholds(th)
        .map_err(|e| format!("{e:?}"))
        .unwrap();

    // One object.
    let (st, body) = post_events(&s, ADMIN, event(1, "vm-1", "203.0.113.1", "4625")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["accepted"].as_u64(),
            body["duplicates"].as_u64(),
            body["rejected"].as_u64()
        ),
        (Some(1), Some(0), Some(0))
    );
    assert_eq!(body["items"][0]["status"], "accepted");
    assert_eq!(
        body["items"][0]["fingerprint"].as_str().map(str::len),
        Some(64)
    );

    // An array with bad items: the good ones are kept, each bad one says why.
    let mut no_ip = event(5, "vm-1", "x", "ssh_failed");
    no_ip.as_object_mut().unwrap().remove("src_ip");
    let batch = json!([
        event(2, "vm-1", "203.0.113.2", "windows_4625"),
        no_ip,
        event(3, "vm-1", "2001:db8::3", "ssh_failed"),
        event(6, "vm-1", "203.0.113.6", "4626"),
        event(4, "vm-2", "::ffff:203.0.113.4", "ssh_accepted"),
        {"source_vm_id": "vm-1", "ts": "not a time", "src_ip": "203.0.113.9", "event_type": "4625"},
    ]);
    let (st, body) = post_events(&s, OPERATOR, batch.clone()).await;
    assert_eq!(st, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(3), Some(3)),
        "{body}"
    );
    let statuses: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "accepted", "rejected", "accepted", "rejected", "accepted", "rejected"
        ]
    );
    assert_eq!(body["items"][1]["field"], "src_ip");
    assert_eq!(body["items"][3]["field"], "event_type");
    assert!(
        body["items"][3]["reason"]
            .as_str()
            .unwrap()
            .contains("4626"),
        "{body}"
    );
    assert_eq!(body["items"][5]["field"], "ts");

    // The retried batch: acknowledged, counted as duplicates, stored once.
    let (st, again) = post_events(&s, OPERATOR, batch).await;
    assert_eq!(st, StatusCode::MULTI_STATUS);
    assert_eq!(
        (
            again["accepted"].as_u64(),
            again["duplicates"].as_u64(),
            again["rejected"].as_u64()
        ),
        (Some(0), Some(3), Some(3)),
        "{again}"
    );
    assert_eq!(
        again["items"][0]["fingerprint"],
        body["items"][0]["fingerprint"]
    );
    let store = s.control.store().clone();
    let all = store.events(&EventQuery::default()).await.unwrap();
    assert_eq!(all.len(), 4, "1 + 3 events stored, none twice: {all:#?}");
    let vm1 = store
        .events(&EventQuery {
            vm_id: Some("vm-1".into()),
            failures_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(vm1.len(), 3);
    let mapped = all.iter().find(|e| e.source_vm_id == "vm-2").unwrap();
    assert_eq!(
        mapped.src_ip,
        "203.0.113.4".parse::<IpAddr>().unwrap(),
        "v4-mapped stored as v4"
    );
    assert_eq!(
        (mapped.event_type.as_str(), mapped.failure),
        ("ssh_accepted", false)
    );

    // Agent tokens: post events (tagged with the token's VM), nothing else.
    let mut untagged = event(7, "x", "198.51.100.7", "4625");
    untagged.as_object_mut().unwrap().remove("source_vm_id");
    let (st, body) = post_events(&s, AGENT, untagged.clone()).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let tagged = store
        .events(&EventQuery {
            src_ip: Some("198.51.100.7".parse().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        tagged[0].source_vm_id, AGENT_VM,
        "tagged with the agent token's VM"
    );
    for (method, path) in [
        (Method::GET, "/api/v1/blocklist"),
        (Method::GET, "/api/v1/thresholds"),
        (Method::GET, "/api/v1/alerts"),
    ] {
        let (st, body) = call(&s, AGENT, method.clone(), path, None).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("agent role"),
            "{body}"
        );
    }
    let (st, _) = call(
        &s,
        AGENT,
        Method::POST,
        "/api/v1/blocklist",
        Some(json!({"cidr": "198.51.100.0/24"})),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = post_events(&s, VIEWER, event(8, "vm-1", "198.51.100.8", "4625")).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "viewers may not post events");

    // An agent bound to win-7: its untagged events are win-7's, and it may not speak for win-8: one
    // such item refuses the whole request (403, the item named), and nothing of it is kept.
    let mut u2 = untagged.clone();
    u2["src_port"] = json!(1);
    let (st, body) = post_events(
        &s,
        BOUND_AGENT,
        json!([
            u2.clone(),
            event(9, "win-8", "198.51.100.9", "4625"),
            event(10, "win-7", "198.51.100.10", "4625")
        ]),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["field"], "items[1].source_vm_id", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("bound to VM `win-7`"),
        "{body}"
    );
    let (st, body) = post_events(&s, BOUND_AGENT, event(9, "win-8", "198.51.100.9", "4625")).await;
    assert_eq!(
        (st, body["field"].as_str()),
        (StatusCode::FORBIDDEN, Some("source_vm_id")),
        "a single object too: {body}"
    );
    assert!(
        store
            .events(&EventQuery {
                vm_id: Some("win-7".into()),
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty(),
        "nothing of a refused request is stored"
    );
    let (st, body) = post_events(
        &s,
        BOUND_AGENT,
        json!([u2, event(10, "win-7", "198.51.100.10", "4625")]),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["status"], "accepted");
    assert_eq!(body["items"][1]["status"], "accepted");
    let win7 = store
        .events(&EventQuery {
            vm_id: Some("win-7".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(win7.len(), 2);

    // Size and shape limits.
    let too_many: Vec<Value> = (0..10_001)
        .map(|n| event(n, "vm-1", "203.0.113.50", "4625"))
        .collect();
    let (st, body) = post_events(&s, ADMIN, Value::Array(too_many)).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["field"], "items");
    let (st, body) = post_events(&s, ADMIN, json!("4625")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    // A JSON type the document rules out is a malformed request: 422, field named, nothing stored.
    let (st, body) = post_events(
        &s,
        ADMIN,
        json!([event(11, "vm-1", "203.0.113.11", "4625"), {"src_ip": 5}]),
    )
    .await;
    assert_eq!(
        (st, body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("items[1].src_ip")),
        "{body}"
    );
    let (st, body) = post_events(
        &s,
        ADMIN,
        json!([event(12, "vm-1", "203.0.113.12", "4625"), 7]),
    )
    .await;
    assert_eq!(
        (st, body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("items[1]")),
        "{body}"
    );
    let resp = http(Some(ADMIN))
        .post(s.url("/api/v1/events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (st, body) = post_events(&s, ADMIN, json!([])).await;
    assert_eq!((st, body["accepted"].as_u64()), (StatusCode::OK, Some(0)));
    assert_eq!(
        store.events(&EventQuery::default()).await.unwrap().len(),
        7,
        "nothing else was stored"
    );

    // The VM and the event type are part of an event's identity: the same time, address, user
    // and port from another VM, or as another event type, are new events, not duplicates that
    // one VM could post first to have another's dropped.
    let first = event(2, "vm-1", "203.0.113.2", "windows_4625");
    let mut other_vm = first.clone();
    other_vm["source_vm_id"] = json!("vm-3");
    let mut other_type = first.clone();
    other_type["event_type"] = json!("windows_4624");
    let (st, body) = post_events(&s, ADMIN, json!([first, other_vm, other_type])).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(2), Some(1)),
        "{body}"
    );
    let statuses: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["duplicate", "accepted", "accepted"], "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_rest_contract_embedded() {
    if !require_root() {
        return;
    }
    rest_contract(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_rest_contract_redis() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    rest_contract(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_round_trip_and_validation() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = stack(dir.path(), "sensor-a", None).await;
    let (st, got) = call(&s, VIEWER, Method::GET, "/api/v1/thresholds", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        got["per_vm"],
        json!({"enabled": true, "max_retry": 5, "find_time": "10m", "ban_time": "1h"})
    );
    assert_eq!(
        got["global"],
        json!({"enabled": true, "max_retry": 10, "find_time": "10m", "ban_time": "1h"})
    );
    assert_eq!(got["vms"], json!({}));

    let new = json!({"global": {"max_retry": 20, "find_time": "1h", "ban_time": "1d"},
                     "per_vm": {"max_retry": 4, "find_time": "5m", "ban_time": "2h"},
                     "vms": {"web-1": {"max_retry": 2}, "db-1": {"enabled": false}}});
    let (st, put) = call(&s, OPERATOR, Method::PUT, "/api/v1/thresholds", Some(new)).await;
    assert_eq!(st, StatusCode::OK, "{put}");
    let (_, got) = call(&s, ADMIN, Method::GET, "/api/v1/thresholds", None).await;
    assert_eq!(got, put);
    assert_eq!(got["global"]["ban_time"], "1day");
    assert_eq!(got["vms"]["web-1"], json!({"max_retry": 2}));
    assert_eq!(
        s.state.events.thresholds().for_vm("web-1").max_retry,
        2,
        "in force at once"
    );

    // Invalid values: every field named, nothing changed.
    let bad = json!({"global": {"max_retry": 0, "find_time": "1h", "ban_time": "1d"},
                     "per_vm": {"max_retry": 4, "find_time": "5m", "ban_time": "0s"},
                     "vms": {"global": {"max_retry": 2}}});
    let (st, body) = call(&s, OPERATOR, Method::PUT, "/api/v1/thresholds", Some(bad)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let fields: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["global.max_retry", "per_vm.ban_time", "vms.global"],
        "{body}"
    );
    let (st, body) = call(&s, OPERATOR, Method::PUT, "/api/v1/thresholds", Some(json!({"global": {"max_retry": 3, "find_time": "soon", "ban_time": "1h"}, "per_vm": {}}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("soon"), "{body}");
    let (st, body) = call(
        &s,
        OPERATOR,
        Method::PUT,
        "/api/v1/thresholds",
        Some(json!({"global": {"max_retry": 3, "find_time": "1m", "ban_time": "1h"}})),
    )
    .await;
    assert_eq!(
        (st, body["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("per_vm")),
        "{body}"
    );
    let (_, after) = call(&s, ADMIN, Method::GET, "/api/v1/thresholds", None).await;
    assert_eq!(after, put, "a refused PUT changes nothing");
    for token in [VIEWER, AGENT] {
        let (st, _) = call(
            &s,
            token,
            Method::PUT,
            "/api/v1/thresholds",
            Some(put.clone()),
        )
        .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
    }
    s.stop().await;
}

/// A second sensor on the same Redis, without an API (it only enforces what it is sent).
async fn plain_sensor(
    redis: &RedisServer,
    id: &str,
) -> (Control, Arc<Mutex<Datapath>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path(), id);
    opts.redis_url = Some(redis.url());
    let store = netguard_store::open(&opts).await.expect("open redis store");
    let dp = Arc::new(Mutex::new(load_small()));
    let cfg = ControlConfig {
        sensor_id: id.into(),
        ..ControlConfig::default()
    };
    let control = Control::start(cfg, dp.clone(), store)
        .await
        .expect("control starts");
    (control, dp, dir)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what} did not happen within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_vm_and_global_thresholds_block_in_the_right_kernels() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = stack(dir.path(), "sensor-a", Some(&redis)).await;
    let (_b, dp_b, _bdir) = plain_sensor(&redis, "sensor-b").await;
    let dp_a = a.dp.clone();
    let mut th = a.state.events.thresholds();
    th.per_vm.max_retry = 3;
    th.global.max_retry = 5;
    a.state
        .events
        .set_thresholds(th)
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    let mut pushed = a.control.subscribe();

    // Per-VM: three SSH failures against sensor-b. The block is made on exactly the 3rd, scoped to
    // sensor-b: b's kernel drops the source, a's does not.
    let x = Ipv4Addr::new(198, 51, 100, 20);
    for n in 0..2 {
        let (st, body) = post_events(
            &a,
            ADMIN,
            now_event(n, "sensor-b", &x.to_string(), "ssh_failed"),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            body["decisions"],
            json!([]),
            "failure {} decides nothing",
            n + 1
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        verdict(&dp_b, x),
        XDP_PASS,
        "not blocked before the 3rd failure"
    );
    let (_, body) = post_events(
        &a,
        ADMIN,
        now_event(2, "sensor-b", &x.to_string(), "ssh_failed"),
    )
    .await;
    let d = &body["decisions"][0];
    assert_eq!(
        (
            d["scope"].as_str(),
            d["rule"].as_str(),
            d["action"].as_str()
        ),
        (Some("sensor-b"), Some("events.per_vm"), Some("blocked")),
        "{body}"
    );
    assert_eq!(
        (
            d["failures"].as_u64(),
            d["class"].as_str(),
            d["ttl"].as_str()
        ),
        (Some(3), Some("ssh_brute_force"), Some("1h"))
    );
    eventually("the per-VM block on sensor-b's kernel", || {
        verdict(&dp_b, x) == XDP_DROP
    })
    .await;
    assert_eq!(
        verdict(&dp_a, x),
        XDP_PASS,
        "sensor-a does not enforce sensor-b's block"
    );
    let entry = a
        .control
        .store()
        .list_entries(ListKind::Block)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.cidr.to_string() == format!("{x}/32"))
        .unwrap();
    assert_eq!(entry.source, netguard_store::EntrySource::Event);
    assert!(entry.expires_at.is_some());
    // The alert went out on the push channel (the WebSocket's source) with class and MITRE id.
    let alert = loop {
        match tokio::time::timeout(Duration::from_secs(5), pushed.recv())
            .await
            .expect("an alert is pushed")
            .unwrap()
        {
            PushEvent::Alert(a) => break a,
            _ => continue,
        }
    };
    assert_eq!(
        (
            alert.class.as_str(),
            alert.mitre.as_str(),
            alert.action.as_str()
        ),
        ("ssh_brute_force", "T1110", "blocked")
    );
    assert_eq!(alert.src_ip, IpAddr::V4(x));
    assert_eq!(alert.evidence["rule"], "events.per_vm");
    assert_eq!(alert.evidence["failures"], 3);
    assert_eq!(alert.evidence["vm_ids"], json!(["sensor-b"]));
    assert_eq!(alert.id, d["alert_id"].as_str().unwrap());

    // Global: Windows failures spread over three VMs, each posted by that VM's own agent, none
    // reaching the per-VM 3, five in all: a global block on the 5th, in both kernels; the class is
    // brute_force (not SSH).
    let y = Ipv4Addr::new(198, 51, 100, 30);
    let vms = ["win-1", "win-2", "win-3"];
    for n in 0..4u32 {
        let vm = vms[n as usize % 3];
        let (_, body) =
            post_events(&a, &agent_of(vm), now_event(n, vm, &y.to_string(), "4625")).await;
        assert_eq!(
            body["decisions"],
            json!([]),
            "failure {} decides nothing: {body}",
            n + 1
        );
    }
    assert_eq!(verdict(&dp_a, y), XDP_PASS);
    let (_, body) = post_events(
        &a,
        &agent_of("win-2"),
        now_event(4, "win-2", &y.to_string(), "4625"),
    )
    .await;
    let d = &body["decisions"][0];
    assert_eq!(
        (d["scope"].as_str(), d["rule"].as_str(), d["class"].as_str()),
        (Some("global"), Some("events.global"), Some("brute_force")),
        "{body}"
    );
    assert_eq!(
        verdict(&dp_a, y),
        XDP_DROP,
        "enforced here before the answer"
    );
    eventually("the global block on sensor-b", || {
        verdict(&dp_b, y) == XDP_DROP
    })
    .await;
    let alerts = a
        .control
        .alerts(netguard_store::AlertQuery {
            limit: 10,
            class: Some("brute_force".into()),
            src: Some(IpAddr::V4(y)),
        })
        .await
        .unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].evidence["vm_ids"],
        json!(["win-1", "win-2", "win-3"])
    );
    assert_eq!(alerts[0].mitre, "T1110");

    // A replayed batch of the same failures counts nothing: no new decision for a fresh source.
    let z = "198.51.100.40";
    let batch = json!([
        now_event(0, "win-9", z, "4625"),
        now_event(1, "win-9", z, "4625")
    ]);
    post_events(&a, ADMIN, batch.clone()).await;
    let (_, again) = post_events(&a, ADMIN, batch).await;
    assert_eq!(again["duplicates"].as_u64(), Some(2));
    let (_, third) = post_events(&a, ADMIN, now_event(2, "win-9", z, "4625")).await;
    assert_eq!(
        third["decisions"][0]["scope"], "win-9",
        "3 distinct failures, not 5: {third}"
    );

    // Allowlisted: the threshold is reached, the block refused, the alert says so.
    let w = Ipv4Addr::new(198, 51, 100, 50);
    let (st, _) = call(
        &a,
        OPERATOR,
        Method::POST,
        "/api/v1/allowlist",
        Some(json!({"cidr": w.to_string()})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let batch: Vec<Value> = (0..3)
        .map(|n| now_event(n, "sensor-a", &w.to_string(), "ssh_failed"))
        .collect();
    let (_, body) = post_events(&a, ADMIN, Value::Array(batch)).await;
    let d = &body["decisions"][0];
    assert_eq!(d["action"], "alerted", "{body}");
    assert!(
        d["refused"].as_str().unwrap().contains("allowlisted"),
        "{body}"
    );
    assert_eq!(verdict(&dp_a, w), XDP_PASS);
    let alerts = a
        .control
        .alerts(netguard_store::AlertQuery {
            limit: 10,
            class: None,
            src: Some(IpAddr::V4(w)),
        })
        .await
        .unwrap();
    assert!(
        alerts[0].evidence["block_refused"]
            .as_str()
            .unwrap()
            .contains("allowlisted")
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_alerts_without_blocking() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = stack(dir.path(), "sensor-a", None).await;
    let mut cfg = netguard_user::events::EventsConfig::default();
    cfg.per_vm.max_retry = 2;
    let events =
        netguard_user::events::Events::new(s.control.clone(), s.state.metrics.clone(), cfg, true);
    let src = Ipv4Addr::new(198, 51, 100, 60);
    let items: Vec<Value> = (0..2)
        .map(|n| now_event(n, "sensor-a", &src.to_string(), "ssh_failed"))
        .collect();
    let report = events.ingest(&items, &Default::default()).await.unwrap();
    assert_eq!(report.decisions.len(), 1);
    assert_eq!(report.decisions[0].action, "alerted");
    assert!(
        report.decisions[0]
            .refused
            .as_deref()
            .unwrap()
            .contains("dry run")
    );
    assert_eq!(s.verdict(&frame_from(src)), XDP_PASS);
    let alerts = s
        .control
        .alerts(netguard_store::AlertQuery {
            limit: 10,
            class: None,
            src: Some(IpAddr::V4(src)),
        })
        .await
        .unwrap();
    assert_eq!(alerts[0].evidence["dry_run"], true);
    // The metrics count what happened, with no address in any label.
    let text = s.state.metrics.render();
    assert!(
        text.contains("netguard_host_events_total{result=\"accepted\",source=\"api\"} 2"),
        "{text}"
    );
    assert!(!text.contains("198.51.100.60"));
    s.stop().await;
}

/// A restart must not reset a brute force half-way: the counts come back from the stored events, and
/// the failure that reaches the threshold after the restart blocks; the replay itself blocks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_restart_of_the_engine() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = stack(dir.path(), "sensor-a", None).await;
    let mut cfg = netguard_user::events::EventsConfig::default();
    cfg.per_vm.max_retry = 5;
    let engine = || {
        netguard_user::events::Events::new(
            s.control.clone(),
            s.state.metrics.clone(),
            cfg.clone(),
            false,
        )
    };
    let fail = |src: Ipv4Addr, n| now_event(n, "sensor-a", &src.to_string(), "ssh_failed");
    let (a, b) = (
        Ipv4Addr::new(198, 51, 100, 61),
        Ipv4Addr::new(198, 51, 100, 62),
    );
    let first = engine();
    let four: Vec<Value> = (0..4).flat_map(|n| [fail(a, n), fail(b, n)]).collect();
    let r = first.ingest(&four, &Default::default()).await.unwrap();
    assert_eq!((r.accepted, r.decisions.len()), (8, 0));

    // A restarted engine that did not restore its counts needs five more failures from b.
    let forgetful = engine();
    let r = forgetful
        .ingest(&[fail(b, 10)], &Default::default())
        .await
        .unwrap();
    assert_eq!(
        (r.accepted, r.decisions.len()),
        (1, 0),
        "a fresh engine starts from zero"
    );
    assert_eq!(s.verdict(&frame_from(b)), XDP_PASS);

    // One that restored them blocks a at its fifth failure, the first after the restart.
    let restarted = engine();
    assert_eq!(restarted.restore_counts().await, 9);
    assert_eq!(s.verdict(&frame_from(a)), XDP_PASS);
    let r = restarted
        .ingest(&[fail(a, 11)], &Default::default())
        .await
        .unwrap();
    assert_eq!(
        r.decisions.len(),
        1,
        "the 5th failure across the restart: {r:?}"
    );
    assert_eq!(s.verdict(&frame_from(a)), XDP_DROP);
    // b reached five in the stored history (4 + 1 counted by the forgetful engine): the replay reached
    // the threshold and did nothing, as its fifth failure had been acted on (here: not) live.
    assert_eq!(s.verdict(&frame_from(b)), XDP_PASS, "the replay blocked b");
    s.stop().await;
}

/// Issue 9 item 8: one VM's agent aims the automatic response at its own VM only. Ten Windows
/// failures for one address from sensor-b's agent, each with its own time, reach the default global
/// threshold (10) from one VM: the per-VM rule blocks the address on sensor-b at the 5th (in
/// sensor-b's kernel only), and the global rule does nothing. One failure from a second VM's agent
/// then completes the global rule: the address is blocked in sensor-a's kernel too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vm_blocks_on_that_vm_only_and_a_second_vm_blocks_everywhere() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let a = stack(dir.path(), "sensor-a", Some(&redis)).await;
    let (_b, dp_b, _bdir) = plain_sensor(&redis, "sensor-b").await;
    let th = a.state.events.thresholds();
    assert_eq!(
        (th.per_vm.max_retry, th.global.max_retry),
        (5, 10),
        "the defaults"
    );
    let x = Ipv4Addr::new(198, 51, 100, 70);
    let agent_b = agent_of("sensor-b");
    let mut decisions = Vec::new();
    for n in 0..10u32 {
        let (st, body) = post_events(
            &a,
            &agent_b,
            now_event(n, "sensor-b", &x.to_string(), "4625"),
        )
        .await;
        assert_eq!(
            (st, body["accepted"].as_u64()),
            (StatusCode::OK, Some(1)),
            "{body}"
        );
        for d in body["decisions"].as_array().unwrap() {
            decisions.push((n + 1, d["scope"].clone(), d["rule"].clone()));
        }
    }
    assert_eq!(
        decisions,
        [(5, json!("sensor-b"), json!("events.per_vm"))],
        "the per-VM block at the 5th failure, no global block at the 10th"
    );
    eventually("the per-VM block in sensor-b's kernel", || {
        verdict(&dp_b, x) == XDP_DROP
    })
    .await;
    // Give a (wrong) global block time to reach sensor-a before judging its absence.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        verdict(&a.dp, x),
        XDP_PASS,
        "one VM's events never block on another VM"
    );
    let entries: Vec<_> = a
        .control
        .store()
        .list_entries(ListKind::Block)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.cidr.to_string() == format!("{x}/32"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].scope.to_string(), "sensor-b");

    // A second VM reports the same source: ten failures in the window from two VMs.
    let (st, body) = post_events(
        &a,
        &agent_of("win-1"),
        now_event(10, "win-1", &x.to_string(), "4625"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let d = &body["decisions"][0];
    assert_eq!(
        (
            d["scope"].as_str(),
            d["rule"].as_str(),
            d["action"].as_str()
        ),
        (Some("global"), Some("events.global"), Some("blocked")),
        "{body}"
    );
    assert_eq!(d["failures"], 10);
    assert_eq!(verdict(&a.dp, x), XDP_DROP, "now blocked on sensor-a too");
    let alerts = a
        .control
        .alerts(netguard_store::AlertQuery {
            limit: 10,
            class: Some("brute_force".into()),
            src: Some(IpAddr::V4(x)),
        })
        .await
        .unwrap();
    assert_eq!(alerts[0].evidence["rule"], "events.global");
    assert_eq!(alerts[0].evidence["vm_ids"], json!(["sensor-b", "win-1"]));
    a.stop().await;
}

/// `[api.events_rate_limit]`: past its burst a token gets 429 with `Retry-After` and the API's error
/// shape, and nothing of the refused request is counted; another token's budget is its own, and the
/// bucket refills at the configured rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_retry_after() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StackOptions::default();
    opts.api.events_rate_limit.per_second = 1.0;
    opts.api.events_rate_limit.burst = 3;
    let s = stack_with(dir.path(), "sensor-a", None, opts).await;
    let src = "198.51.100.80";
    for n in 0..3 {
        let (st, body) = post_events(&s, AGENT, now_event(n, AGENT_VM, src, "4625")).await;
        assert_eq!(
            st,
            StatusCode::OK,
            "request {} is within the burst: {body}",
            n + 1
        );
    }
    let resp = http(Some(AGENT))
        .post(s.url("/api/v1/events"))
        .json(&now_event(3, AGENT_VM, src, "4625"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1", "{:?}", resp.headers());
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("`agent`") && error.contains("retry after 1 s"),
        "{body}"
    );
    // Keyed by token, not by address: the same client with another token is not limited.
    let (st, body) = post_events(&s, ADMIN, now_event(4, AGENT_VM, src, "4625")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let stored = s
        .control
        .store()
        .events(&EventQuery {
            src_ip: Some(src.parse().unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 4, "the refused post was not stored");
    // One request per second: after the wait the token may post again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, body) = post_events(&s, AGENT, now_event(5, AGENT_VM, src, "4625")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Authentication comes first: an unknown token is 401, not 429.
    let (st, _) = post_events(&s, "no-such-token-0123456789", json!([])).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

/// The real `netguard run` with a config whose agent token names no VM: it stops before attaching,
/// with a message that names the token and the field to add.
#[test]
fn an_agent_token_without_a_vm_stops_the_daemon_at_start() {
    if !require_root() {
        return;
    }
    let lab = netguard_tests::netns::NetnsPair::new("agentvm");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("netguard.toml");
    std::fs::write(
        &cfg,
        "[[api.tokens]]\nname = \"win-1\"\nrole = \"agent\"\ntoken = \"agent-token-of-win-1-0123456789\"\nvm_id = \"win-1\"\n\
         [[api.tokens]]\nname = \"win-agents\"\nrole = \"agent\"\ntoken = \"agent-token-of-many-0123456789\"\n",
    )
    .unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.sensor])
        .arg(netguard_tests::daemon::netguard_bin())
        .args(["run", "--iface", "lo", "--xdp-mode", "skb", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("netguard runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(
            "api.tokens[1] (name \"win-agents\"): an agent token must name its VM: add vm_id = \"...\""
        ),
        "{text}"
    );
    assert!(text.contains("netguard.toml"), "the file is named: {text}");
    let link = std::process::Command::new("ip")
        .args(["-n", &lab.sensor, "link", "show", "lo"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "nothing was attached"
    );
    assert!(
        !dir.path().join("state").join("admin.token").exists(),
        "refused before anything was written"
    );
}

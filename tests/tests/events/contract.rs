//! The REST contract of `POST /events` (single, arrays, duplicates, agents, limits) and `/thresholds`.

use super::*;

pub(crate) async fn rest_contract(redis: Option<&RedisServer>) {
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

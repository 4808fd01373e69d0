//! Alerts from the store, flows from the kernel, and the seed-compatible aliases.

use super::*;

fn alert(id: &str, class: &str, src: &str, secs_ago: i64) -> Alert {
    Alert {
        id: id.into(),
        ts: chrono::Utc::now() - chrono::Duration::seconds(secs_ago),
        sensor_id: "sensor-a".into(),
        class: class.into(),
        src_ip: src.parse().unwrap(),
        dst_ip: Some(IpAddr::V4(SEN)),
        dst_port: Some(22),
        risk: 80,
        confidence: 0.9,
        mitre: "T1110".into(),
        action: "alerted".into(),
        evidence: serde_json::Map::new(),
        count: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_come_from_the_store_newest_first() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    s.control
        .raise_alert(alert("a1", "port_scan", "203.0.113.5", 20))
        .await;
    s.control
        .raise_alert(alert("a2", "ssh_brute_force", "203.0.113.6", 10))
        .await;
    s.control
        .raise_alert(alert("a3", "port_scan", "2001:db8::5", 0))
        .await;
    let get = |path: &'static str| call(&s, Some(VIEWER), Method::GET, path, None);
    let (st, all) = get("/api/v1/alerts").await;
    assert_eq!(st, 200, "{all}");
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a3", "a2", "a1"]);
    assert_eq!(all[0]["mitre"], "T1110");
    let (_, scans) = get("/api/v1/alerts?class=port_scan&limit=1").await;
    assert_eq!(scans.as_array().unwrap().len(), 1);
    assert_eq!(scans[0]["id"], "a3");
    let (_, from) = get("/api/v1/alerts?src=203.0.113.6").await;
    assert_eq!(from.as_array().unwrap().len(), 1);
    assert_eq!(from[0]["class"], "ssh_brute_force");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_show_what_the_kernel_counted() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let a = Ipv4Addr::new(10, 213, 7, 7);
    let syn = FrameSpec::v4(a, SEN, tcp(41000, 22, tf::SYN as u8))
        .build()
        .bytes;
    let ack = FrameSpec::v4(a, SEN, tcp(41000, 22, (tf::ACK | tf::PSH) as u8))
        .payload(&[0u8; 100])
        .build()
        .bytes;
    for f in [&syn, &ack, &ack] {
        assert_eq!(s.verdict(f), XDP_PASS);
    }
    let small = FrameSpec::v6(
        Ipv6Addr::new(0xfd00, 0x213, 9, 0, 0, 0, 0, 9),
        SEN6,
        tcp(1, 80, tf::SYN as u8),
    )
    .build()
    .bytes;
    assert_eq!(s.verdict(&small), XDP_PASS);
    let (st, b) = call(
        &s,
        Some(VIEWER),
        Method::GET,
        "/api/v1/flows?top=1&sort=packets",
        None,
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["total"], 2);
    assert_eq!(b["flows"].as_array().unwrap().len(), 1, "top=1: {b}");
    let f = &b["flows"][0];
    assert_eq!(
        (f["src"].as_str(), f["dst"].as_str()),
        (Some("10.213.7.7"), Some("10.213.1.1")),
        "{f}"
    );
    assert_eq!(
        (
            f["src_port"].as_u64(),
            f["dst_port"].as_u64(),
            f["proto"].as_str()
        ),
        (Some(41000), Some(22), Some("tcp"))
    );
    assert_eq!(
        (f["packets"].as_u64(), f["syn"].as_u64(), f["ack"].as_u64()),
        (Some(3), Some(1), Some(2))
    );
    assert_eq!(f["tcp_flags"], "SYN|ACK|PSH");
    let bytes = (syn.len() + 2 * ack.len()) as u64;
    assert_eq!(f["bytes"].as_u64(), Some(bytes));
    let (first, last) = (
        f["first_seen_ms_ago"].as_u64().unwrap(),
        f["last_seen_ms_ago"].as_u64().unwrap(),
    );
    assert!(
        first >= last && first < 60_000,
        "ages in ms from CLOCK_MONOTONIC_COARSE: {f}"
    );
    let (_, b) = call(&s, Some(VIEWER), Method::GET, "/api/v1/flows", None).await;
    assert_eq!(b["sort"], "bytes");
    assert_eq!(b["flows"][1]["src"], "fd00:213:9::9", "{b}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_aliases_go_through_control() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let mut push = s.control.subscribe();
    let (st, b) = op(
        &s,
        Method::POST,
        "/api/v1/block",
        Some(json!({"ip": "198.51.100.20", "duration_seconds": 3600, "reason": "seed"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), b["status"].as_str(), b["ip"].as_str()),
        (200, Some("blocked"), Some("198.51.100.20/32")),
        "{b}"
    );
    assert!(b["entry"]["expires_at"].is_string());
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.20"))), XDP_DROP);
    let ev = serde_json::to_value(push.recv().await.unwrap()).unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["source"].as_str()),
        (Some("block"), Some("manual")),
        "{ev}"
    );

    // Per VM: this sensor's id is enforced here; another VM's is stored but not enforced here.
    let (st, b) = op(
        &s,
        Method::POST,
        "/api/v1/block/per-vm",
        Some(json!({"ip": "198.51.100.21", "vm_id": "sensor-a", "ttl": "1h"})),
    )
    .await;
    assert_eq!(
        (st.as_u16(), b["entry"]["scope"].as_str()),
        (200, Some("sensor-a")),
        "{b}"
    );
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.21"))), XDP_DROP);
    let (st, b) = op(
        &s,
        Method::POST,
        "/api/v1/block/per-vm",
        Some(json!({"ip": "198.51.100.22", "vm_id": "vm-9", "ttl": 60})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        s.verdict(&frame_from(ip("198.51.100.22"))),
        XDP_PASS,
        "another sensor's block is not enforced here"
    );
    let (st, b) = call(&s, Some(VIEWER), Method::GET, "/api/v1/blocked-ips", None).await;
    assert_eq!((st.as_u16(), b["count"].as_u64()), (200, Some(3)), "{b}");
    let other = b["blocked_ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["scope"] == "vm-9")
        .expect("listed");
    assert_eq!(other["enforced"], false);

    // Errors name the seed's fields.
    assert_refused(
        &op(
            &s,
            Method::POST,
            "/api/v1/block",
            Some(json!({"ip": "nope"})),
        )
        .await,
        400,
        "ip",
    );
    assert_refused(
        &op(
            &s,
            Method::POST,
            "/api/v1/block",
            Some(json!({"ip": "10.0.0.1", "duration_seconds": 0})),
        )
        .await,
        400,
        "duration_seconds",
    );
    assert_refused(
        &op(
            &s,
            Method::POST,
            "/api/v1/block",
            Some(json!({"ip": "10.0.0.1", "duration_seconds": 5, "ttl": "5s"})),
        )
        .await,
        400,
        "ttl",
    );
    assert_refused(
        &op(
            &s,
            Method::POST,
            "/api/v1/block/per-vm",
            Some(json!({"ip": "10.0.0.1", "vm_id": "global"})),
        )
        .await,
        400,
        "vm_id",
    );
    assert_refused(
        &op(&s, Method::DELETE, "/api/v1/block/nope", None).await,
        400,
        "ip",
    );

    let (st, b) = op(&s, Method::DELETE, "/api/v1/block/198.51.100.20", None).await;
    assert_eq!(
        (st.as_u16(), b["status"].as_str(), b["removed"].as_u64()),
        (200, Some("unblocked"), Some(1)),
        "{b}"
    );
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.20"))), XDP_PASS);
    let (_, b) = op(&s, Method::DELETE, "/api/v1/block/198.51.100.20", None).await;
    assert_eq!(b["status"], "not_blocked");
    let (st, b) = op(&s, Method::DELETE, "/api/v1/block/198.51.100.21%2F32", None).await;
    assert_eq!(
        (st.as_u16(), b["removed"].as_u64()),
        (200, Some(1)),
        "a CIDR with an encoded slash: {b}"
    );
    s.stop().await;
}

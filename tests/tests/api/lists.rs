//! Adding, listing and removing entries, every refusal, bulk atomicity, TTL expiry and restart:
//! each checked in the kernel as well as over HTTP.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_list_delete_v4_v6_is_enforced_in_the_kernel() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    for (addr, want) in [
        ("198.51.100.7", "198.51.100.7/32"),
        ("2001:db8::7", "2001:db8::7/128"),
    ] {
        assert_eq!(s.verdict(&frame_from(ip(addr))), XDP_PASS);
        let (st, b) = op(
            &s,
            Method::POST,
            "/api/v1/blocklist",
            Some(json!({"cidr": addr, "reason": "test"})),
        )
        .await;
        assert_eq!(st, 200, "{b}");
        assert_eq!(
            b["entries"][0]["cidr"], want,
            "a host address becomes a host CIDR: {b}"
        );
        assert_eq!(
            (b["applied"].as_u64(), b["created"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(
            s.verdict(&frame_from(ip(addr))),
            XDP_DROP,
            "{addr} blocked by the API must be dropped"
        );
        let (st, b) = op(
            &s,
            Method::DELETE,
            &format!("/api/v1/blocklist?cidr={want}"),
            None,
        )
        .await;
        assert_eq!((st.as_u16(), b["removed"].as_u64()), (200, Some(1)), "{b}");
        assert_eq!(
            s.verdict(&frame_from(ip(addr))),
            XDP_PASS,
            "{addr} unblocked must pass"
        );
        let (st, b) = op(
            &s,
            Method::DELETE,
            &format!("/api/v1/blocklist?cidr={addr}"),
            None,
        )
        .await;
        assert_eq!(
            (st.as_u16(), b["removed"].as_u64()),
            (200, Some(0)),
            "DELETE is idempotent: {b}"
        );
    }

    // Bulk: a v4 /24 and a v6 /48, both enforced, both listed with the total in a header.
    let bulk = json!([{"cidr": "203.0.113.0/24", "ttl": "4h"}, {"cidr": "2001:db8:5::/48", "scope": "global"}]);
    let (st, b) = op(&s, Method::POST, "/api/v1/blocklist", Some(bulk)).await;
    assert_eq!((st.as_u16(), b["applied"].as_u64()), (200, Some(2)), "{b}");
    assert_eq!(s.verdict(&frame_from(ip("203.0.113.99"))), XDP_DROP);
    assert_eq!(s.verdict(&frame_from(ip("2001:db8:5:1::9"))), XDP_DROP);
    assert_eq!(s.verdict(&frame_from(ip("2001:db8:6::9"))), XDP_PASS);
    let resp = http(Some(VIEWER))
        .get(s.url("/api/v1/blocklist?limit=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-total-count"], "2");
    let page: Value = resp.json().await.unwrap();
    assert_eq!(
        page.as_array().map(Vec::len),
        Some(1),
        "limit=1 gives one entry: {page}"
    );
    let (_, all) = call(&s, Some(VIEWER), Method::GET, "/api/v1/blocklist", None).await;
    let e = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cidr"] == "203.0.113.0/24")
        .expect("listed");
    assert_eq!(
        (
            e["scope"].as_str(),
            e["source"].as_str(),
            e["enforced"].as_bool()
        ),
        (Some("global"), Some("manual"), Some(true))
    );
    assert!(
        e["expires_at"].is_string() && e["created_at"].is_string(),
        "{e}"
    );
    assert_eq!(
        e["hits"].as_u64(),
        Some(1),
        "the kernel's hit counter is shown: {e}"
    );

    // The allowlist has the same shape.
    let (st, b) = op(
        &s,
        Method::POST,
        "/api/v1/allowlist",
        Some(json!({"cidr": "192.0.2.0/28"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, list) = call(&s, Some(VIEWER), Method::GET, "/api/v1/allowlist", None).await;
    assert_eq!(
        (st.as_u16(), list[0]["cidr"].as_str()),
        (200, Some("192.0.2.0/28"))
    );
    let (st, b) = op(
        &s,
        Method::DELETE,
        "/api/v1/allowlist?cidr=192.0.2.0/28&scope=global",
        None,
    )
    .await;
    assert_eq!((st.as_u16(), b["removed"].as_u64()), (200, Some(1)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_naming_the_field() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opts = StackOptions {
        control: ControlConfig {
            sensor_id: "sensor-a".into(),
            max_bulk: 5,
            ..ControlConfig::default()
        },
        ..StackOptions::default()
    };
    let s = Stack::start(dir.path(), opts).await;
    let post = |body: Value| op(&s, Method::POST, "/api/v1/blocklist", Some(body));
    assert_refused(&post(json!({"cidr": "10.0.0.300"})).await, 400, "cidr");
    assert_refused(&post(json!({"cidr": "10.0.0.1/24"})).await, 400, "cidr");
    assert_refused(
        &post(json!({"cidr": "10.0.0.0/8", "ttl": "soon"})).await,
        400,
        "ttl",
    );
    assert_refused(
        &post(json!({"cidr": "10.0.0.0/8", "ttl": "0s"})).await,
        400,
        "ttl",
    );
    assert_refused(
        &post(json!({"cidr": "10.0.0.0/8", "scope": "global x"})).await,
        400,
        "scope",
    );
    assert_refused(
        &post(json!({"cidr": "10.0.0.0/8", "colour": "red"})).await,
        422,
        "colour",
    );
    assert_refused(&post(json!({"cidr": 7})).await, 422, "cidr");
    assert_refused(&post(json!({"ttl": "1h"})).await, 422, "cidr");
    assert_refused(&post(json!({"cidr": "0.0.0.0/0"})).await, 400, "cidr");
    assert_refused(&post(json!({"cidr": "::/0"})).await, 400, "cidr");
    // So do prefixes that together cover every address, in one request or across requests. The
    // rest of each family is blocked first (with force: it holds this host's own addresses), so
    // that the last gap, a documentation range no host uses, is refused for coverage alone.
    for (gap, halves, inside) in [
        (
            "198.51.100.0/24",
            ["198.51.100.0/25", "198.51.100.128/25"],
            "198.51.100.1",
        ),
        (
            "2001:db8::/32",
            ["2001:db8::/33", "2001:db8:8000::/33"],
            "2001:db8::1",
        ),
    ] {
        let rest = complement(gap.parse().unwrap());
        for net in &rest {
            let (st, b) = post(json!({"cidr": net.to_string(), "force": true})).await;
            assert_eq!(st, 200, "{net}: {b}");
        }
        assert_eq!(s.verdict(&frame_from(ip(inside))), XDP_PASS);
        assert_refused(&post(json!({"cidr": gap})).await, 400, "cidr");
        assert_refused(
            &post(json!([{"cidr": halves[0]}, {"cidr": halves[1]}])).await,
            400,
            "items[0].cidr",
        );
        let (st, b) = post(json!({"cidr": halves[0]})).await;
        assert_eq!(st, 200, "half of the gap leaves the other half: {b}");
        assert_refused(&post(json!({"cidr": halves[1]})).await, 400, "cidr");
        assert_eq!(s.verdict(&frame_from(ip(inside))), XDP_DROP);
        let (st, b) = post(json!({"cidr": halves[1], "force": true})).await;
        assert_eq!(st, 200, "{b}");
        for net in rest
            .iter()
            .map(ToString::to_string)
            .chain(halves.map(String::from))
        {
            let (st, _) = op(
                &s,
                Method::DELETE,
                &format!("/api/v1/blocklist?cidr={net}"),
                None,
            )
            .await;
            assert_eq!(st, 200);
        }
        assert_eq!(s.verdict(&frame_from(ip(inside))), XDP_PASS);
    }
    // An IPv4-mapped IPv6 entry is the IPv4 address, so IPv4 packets match it.
    assert_eq!(s.verdict(&frame_from(ip("192.0.2.9"))), XDP_PASS);
    let (st, b) = post(json!({"cidr": "::ffff:192.0.2.9"})).await;
    assert_eq!(
        (st.as_u16(), &b["entries"][0]["cidr"]),
        (200, &json!("192.0.2.9/32")),
        "{b}"
    );
    assert_eq!(s.verdict(&frame_from(ip("192.0.2.9"))), XDP_DROP);
    let (st, _) = op(
        &s,
        Method::DELETE,
        "/api/v1/blocklist?cidr=::ffff:192.0.2.9",
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(s.verdict(&frame_from(ip("192.0.2.9"))), XDP_PASS);
    let six: Vec<Value> = (1..=6)
        .map(|i| json!({"cidr": format!("10.1.{i}.0/24")}))
        .collect();
    assert_refused(&post(Value::Array(six)).await, 413, "items");

    // Malformed JSON and wrong content types: JSON errors too, never axum's plain text.
    let raw = |ct: &'static str, body: &'static str| {
        http(Some(OPERATOR))
            .post(s.url("/api/v1/blocklist"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let resp = raw("application/json", "{\"cidr\": ").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        resp.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let resp = raw("text/plain", "{\"cidr\": \"10.0.0.0/8\"}")
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

    // Allowlisted ranges can never be blocked, whichever covers the other.
    let (st, _) = op(
        &s,
        Method::POST,
        "/api/v1/allowlist",
        Some(json!({"cidr": "10.9.0.0/16"})),
    )
    .await;
    assert_eq!(st, 200);
    assert_refused(&post(json!({"cidr": "10.9.1.0/24"})).await, 400, "cidr");
    assert_refused(&post(json!({"cidr": "10.0.0.0/8"})).await, 400, "cidr");
    assert_refused(
        &post(json!([{"cidr": "10.8.0.0/16"}, {"cidr": "10.9.0.7"}])).await,
        400,
        "items[1].cidr",
    );
    assert!(
        s.dp.lock().unwrap().blocklist.is_empty(),
        "no refused entry reached the kernel"
    );

    // The whole internet only with force (then removed again).
    let (st, b) = post(json!({"cidr": "::/0", "force": true})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(s.verdict(&frame_from(ip("2001:db8::1"))), XDP_DROP);
    let (st, _) = op(&s, Method::DELETE, "/api/v1/blocklist?cidr=::/0", None).await;
    assert_eq!(st, 200);

    // Query parameters.
    let get = |path: &'static str| call(&s, Some(VIEWER), Method::GET, path, None);
    assert_refused(&get("/api/v1/alerts?limit=0").await, 400, "limit");
    assert_refused(&get("/api/v1/alerts?limit=10001").await, 400, "limit");
    assert_refused(&get("/api/v1/alerts?limit=ten").await, 400, "limit");
    assert_refused(&get("/api/v1/alerts?src=not-an-ip").await, 400, "src");
    assert_refused(&get("/api/v1/flows?sort=size").await, 400, "sort");
    assert_refused(&get("/api/v1/flows?top=0").await, 400, "top");
    assert_refused(&get("/api/v1/blocklist?limit=100001").await, 400, "limit");
    assert_refused(
        &op(&s, Method::DELETE, "/api/v1/blocklist", None).await,
        400,
        "cidr",
    );
    assert_refused(
        &op(&s, Method::DELETE, "/api/v1/blocklist?cidr=nope", None).await,
        400,
        "cidr",
    );

    // Unknown routes and methods.
    let (st, b) = get("/api/v1/nope").await;
    assert_eq!((st.as_u16(), b["error"].is_string()), (404, true), "{b}");
    let (st, b) = op(&s, Method::PUT, "/api/v1/blocklist", None).await;
    assert_eq!((st.as_u16(), b["error"].is_string()), (405, true), "{b}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_with_bad_items_applies_nothing_and_lists_them_all() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let body = json!([
        {"cidr": "198.18.0.0/24"},
        {"cidr": "198.18.1.300"},
        {"cidr": "2001:db8:77::/48", "ttl": "forever"},
        {"cidr": "198.18.2.0/24"},
    ]);
    let (st, b) = op(&s, Method::POST, "/api/v1/blocklist", Some(body)).await;
    assert_eq!(st, 400, "{b}");
    let fields: Vec<&str> = b["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["items[1].cidr", "items[2].ttl"], "{b}");
    assert_eq!(b["field"], "items[1].cidr");
    let resp = http(Some(VIEWER))
        .get(s.url("/api/v1/blocklist"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-total-count"], "0");
    assert!(
        s.dp.lock().unwrap().blocklist.is_empty(),
        "nothing reached the kernel"
    );
    assert_eq!(s.verdict(&frame_from(ip("198.18.0.1"))), XDP_PASS);
    assert_eq!(s.verdict(&frame_from(ip("198.18.2.1"))), XDP_PASS);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_unblocks_in_the_kernel_and_pushes_unblock() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let mut push = s.control.subscribe();
    let (st, b) = op(
        &s,
        Method::POST,
        "/api/v1/blocklist",
        Some(json!({"cidr": "198.51.100.0/24", "ttl": "2s"})),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let posted = std::time::Instant::now();
    let f = frame_from(ip("198.51.100.9"));
    assert_eq!(s.verdict(&f), XDP_DROP);
    let net = "198.51.100.0/24".parse().unwrap();
    let gone = Stack::wait_until(Duration::from_secs(3), || {
        !s.dp.lock().unwrap().blocklist.contains(&net)
    })
    .await;
    assert!(
        gone,
        "a 2 s TTL entry is still in the kernel {:?} after the POST",
        posted.elapsed()
    );
    assert!(
        posted.elapsed() >= Duration::from_millis(1900),
        "expired early: {:?}",
        posted.elapsed()
    );
    assert_eq!(s.verdict(&f), XDP_PASS);
    let unblock = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let ev = serde_json::to_value(push.recv().await.expect("push channel")).unwrap();
            if ev["type"] == "unblock" {
                return ev;
            }
        }
    })
    .await
    .expect("an unblock push within 2 s of expiry");
    assert_eq!(
        (unblock["cidr"].as_str(), unblock["reason"].as_str()),
        (Some("198.51.100.0/24"), Some("expired")),
        "{unblock}"
    );
    let resp = http(Some(VIEWER))
        .get(s.url("/api/v1/blocklist"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-total-count"], "0");
    s.stop().await;
}

#[test]
fn a_restart_enforces_stored_blocks_in_a_new_datapath() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = frame_from(ip("203.0.113.50"));
    let f6 = frame_from(ip("2001:db8:99::1"));
    // Each life in its own runtime: dropping the runtime ends Control's tasks and closes the store.
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = start(dir.path()).await;
            let (st, b) = op(
                &s,
                Method::POST,
                "/api/v1/blocklist",
                Some(
                    json!([{"cidr": "203.0.113.0/24"}, {"cidr": "2001:db8:99::/48", "ttl": "1h"}]),
                ),
            )
            .await;
            assert_eq!(st, 200, "{b}");
            assert_eq!(s.verdict(&f), XDP_DROP);
            s.stop().await;
        });
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dp = netguard_tests::fixtures::load_small();
        assert_eq!(
            dp.test_run(&f).unwrap(),
            XDP_PASS,
            "a new datapath starts empty"
        );
        let s = Stack::start_with(dp, dir.path(), StackOptions::default()).await;
        assert_eq!(
            s.verdict(&f),
            XDP_DROP,
            "the stored block is enforced again after a restart"
        );
        assert_eq!(s.verdict(&f6), XDP_DROP);
        let resp = http(Some(VIEWER))
            .get(s.url("/api/v1/blocklist"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-total-count"], "2");
        s.stop().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_kernel_agree_after_api_changes() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (st, _) = op(
        &s,
        Method::POST,
        "/api/v1/blocklist",
        Some(json!([{"cidr": "198.51.100.0/25"}, {"cidr": "2001:db8:1::/64"}])),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = op(
        &s,
        Method::DELETE,
        "/api/v1/blocklist?cidr=2001:db8:1::/64",
        None,
    )
    .await;
    assert_eq!(st, 200);
    let stored = s
        .control
        .store()
        .list_entries(ListKind::Block)
        .await
        .unwrap();
    let stored: Vec<String> = stored.iter().map(|e| e.cidr.to_string()).collect();
    assert_eq!(stored, ["198.51.100.0/25"]);
    let kernel: Vec<String> =
        s.dp.lock()
            .unwrap()
            .blocklist
            .nets()
            .map(|n| n.to_string())
            .collect();
    assert_eq!(kernel, ["198.51.100.0/25"]);
    s.stop().await;
}

/// The prefixes that, with `net`, cover its whole family: the sibling of each of its ancestors.
fn complement(net: ipnet::IpNet) -> Vec<ipnet::IpNet> {
    (1..=net.prefix_len())
        .map(|len| {
            let ancestor = ipnet::IpNet::new(net.addr(), len).unwrap().trunc();
            let bit = net.max_prefix_len() - len;
            let sibling: std::net::IpAddr = match ancestor.addr() {
                std::net::IpAddr::V4(a) => {
                    std::net::Ipv4Addr::from(u32::from(a) ^ (1u32 << bit)).into()
                }
                std::net::IpAddr::V6(a) => {
                    std::net::Ipv6Addr::from(u128::from(a) ^ (1u128 << bit)).into()
                }
            };
            ipnet::IpNet::new(sibling, len).unwrap()
        })
        .collect()
}

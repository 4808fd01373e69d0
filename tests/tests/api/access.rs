//! Tokens and roles, health, metrics and the OpenAPI document.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let body = || Some(json!({"cidr": "198.51.100.1"}));
    let resp = http(None)
        .get(s.url("/api/v1/blocklist"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(
        call(
            &s,
            Some("wrong-token-0123456789abcdef"),
            Method::GET,
            "/api/v1/blocklist",
            None
        )
        .await
        .0,
        401
    );
    let resp = http(None)
        .get(s.url("/api/v1/blocklist"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        call(&s, None, Method::POST, "/api/v1/blocklist", body())
            .await
            .0,
        401
    );
    assert_eq!(
        call(&s, Some(VIEWER), Method::GET, "/api/v1/blocklist", None)
            .await
            .0,
        200
    );
    let (st, b) = call(&s, Some(VIEWER), Method::POST, "/api/v1/blocklist", body()).await;
    assert_eq!(st, 403, "{b}");
    assert!(b["error"].as_str().unwrap().contains("viewer"), "{b}");
    assert_eq!(
        call(&s, Some(AGENT), Method::GET, "/api/v1/alerts", None)
            .await
            .0,
        403,
        "agents only post events"
    );
    assert_eq!(
        call(&s, Some(AGENT), Method::POST, "/api/v1/blocklist", body())
            .await
            .0,
        403
    );
    assert_eq!(
        call(
            &s,
            Some(VIEWER),
            Method::DELETE,
            "/api/v1/blocklist?cidr=198.51.100.1",
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &s,
            Some(OPERATOR),
            Method::POST,
            "/api/v1/blocklist",
            body()
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &s,
            Some(ADMIN),
            Method::DELETE,
            "/api/v1/blocklist?cidr=198.51.100.1",
            None
        )
        .await
        .0,
        200
    );
    assert!(s.dp.lock().unwrap().blocklist.is_empty());
    // Readable without a token: health (503 here: the datapath is not attached), metrics, the document.
    let (st, h) = call(&s, None, Method::GET, "/api/v1/health", None).await;
    assert_eq!(
        (st.as_u16(), h["datapath"]["attached"].as_bool()),
        (503, Some(false)),
        "{h}"
    );
    let resp = http(None).get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        call(&s, None, Method::GET, "/openapi.json", None).await.0,
        200
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_once_attached() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("api-health");
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (st, h) = call(&s, None, Method::GET, "/api/v1/health", None).await;
    assert_eq!(
        (st.as_u16(), h["status"].as_str()),
        (503, Some("degraded")),
        "{h}"
    );
    assert_eq!(
        (
            h["store"]["reachable"].as_bool(),
            h["store"]["backend"].as_str()
        ),
        (Some(true), Some("embedded"))
    );
    {
        let _in_ns = lab.enter_sensor();
        s.dp.lock()
            .unwrap()
            .attach(SENSOR_IF, AttachMode::Skb)
            .expect("attach in the lab namespace");
    }
    let (st, h) = call(&s, None, Method::GET, "/api/v1/health", None).await;
    assert_eq!(
        (st.as_u16(), h["status"].as_str()),
        (200, Some("ok")),
        "{h}"
    );
    assert_eq!(
        (
            h["datapath"]["iface"].as_str(),
            h["datapath"]["mode"].as_str()
        ),
        (Some(SENSOR_IF), Some("skb"))
    );
    assert_eq!(h["sensor_id"], "sensor-a");
    s.stop().await;
    drop(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_use_route_templates_and_kernel_counters() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (st, _) = op(
        &s,
        Method::POST,
        "/api/v1/block",
        Some(json!({"ip": "198.51.100.77"})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(s.verdict(&frame_from(ip("198.51.100.77"))), XDP_DROP);
    let (st, _) = op(&s, Method::DELETE, "/api/v1/block/198.51.100.77", None).await;
    assert_eq!(st, 200);
    let _ = call(&s, None, Method::GET, "/scan/198.51.100.78", None).await;
    let text = http(None)
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("route=\"/api/v1/block/{ip}\""), "{text}");
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(
        !text.contains("198.51.100.7"),
        "no address in any label:\n{text}"
    );
    let drops = text
        .lines()
        .find(|l| l.starts_with("netguard_packets_total") && l.contains("drop"))
        .unwrap_or_else(|| panic!("no packets_total{{action=drop}}:\n{text}"));
    assert!(
        drops.ends_with(" 1"),
        "the kernel's drop counter, read at scrape time: {drops}"
    );
    s.stop().await;
}

/// Every route the router serves, by method and template.
const ROUTES: [(&str, &str); 34] = [
    ("get", "/api/v1/health"),
    ("get", "/metrics"),
    ("get", "/api/v1/blocklist"),
    ("post", "/api/v1/blocklist"),
    ("delete", "/api/v1/blocklist"),
    ("get", "/api/v1/allowlist"),
    ("post", "/api/v1/allowlist"),
    ("delete", "/api/v1/allowlist"),
    ("get", "/api/v1/alerts"),
    ("get", "/api/v1/flows"),
    ("get", "/api/v1/ws"),
    ("post", "/api/v1/block"),
    ("post", "/api/v1/block/per-vm"),
    ("delete", "/api/v1/block/{ip}"),
    ("get", "/api/v1/blocked-ips"),
    ("get", "/api/v1/never-block"),
    ("get", "/api/v1/suspicious-ips"),
    ("get", "/api/v1/statistics"),
    ("get", "/api/v1/statistics/global"),
    ("get", "/api/v1/feed"),
    ("get", "/api/v1/vms"),
    ("post", "/api/v1/vms"),
    // Before the DELETE below, which unregisters the VM the loop checks with.
    ("get", "/api/v1/vms/{vm_id}/attacks"),
    ("delete", "/api/v1/vms/{vm_id}"),
    ("get", "/api/v1/geo-attacks"),
    ("post", "/api/v1/events"),
    ("get", "/api/v1/thresholds"),
    ("put", "/api/v1/thresholds"),
    ("get", "/api/v1/session"),
    ("post", "/api/v1/session"),
    ("delete", "/api/v1/session"),
    ("get", "/api/threats"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/openapi.json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_route() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let (st, doc) = call(&s, None, Method::GET, "/openapi.json", None).await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // A registered VM, so that the `{vm_id}` routes below answer for a known VM.
    let (st, body) = call(
        &s,
        Some(ADMIN),
        Method::POST,
        "/api/v1/vms",
        Some(json!({"id": "route-check"})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
        // Every operation documents its errors with the one error schema.
        let default =
            op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].as_str();
        if path != "/metrics" && !path.ends_with("openapi.json") {
            assert_eq!(
                default,
                Some("#/components/schemas/ErrorBody"),
                "{method} {path}"
            );
        }
        // Served, not just documented: the live router answers something other than 404/405.
        let url = s.url(
            &path
                .replace("{ip}", "192.0.2.1")
                .replace("{vm_id}", "route-check"),
        );
        let resp = http(Some(ADMIN))
            .request(method.to_uppercase().parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        assert!(
            ![404, 405].contains(&resp.status().as_u16()),
            "{method} {path}: {}",
            resp.status()
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "a route is documented that the test does not know; add it to ROUTES"
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(
        (
            schemes["token_query"]["in"].as_str(),
            schemes["token_query"]["name"].as_str()
        ),
        (Some("query"), Some("token"))
    );
    assert_eq!(
        doc["paths"]["/api/v1/blocklist"]["post"]["security"][0]["bearer"],
        json!([])
    );
    assert!(
        doc["paths"]["/api/v1/health"]["get"]["security"].is_null(),
        "health needs no token"
    );
    assert!(doc["components"]["schemas"]["PushEvent"].is_object());
    let params: Vec<&str> = doc["paths"]["/api/v1/alerts"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["limit", "class", "src"]);
    s.stop().await;
}

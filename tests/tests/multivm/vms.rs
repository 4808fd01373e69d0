//! `/vms` and `/vms/{vm_id}` (registration, listing, removal), and what each role may do.

use super::*;

pub(crate) async fn vms(s: &Stack) {
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

pub(crate) async fn roles(s: &Stack) {
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

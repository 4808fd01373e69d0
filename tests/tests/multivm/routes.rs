//! `/suspicious-ips`, `/statistics`, `/feed` and `/vms/{vm_id}/attacks` against the seeded stack.

use super::*;

pub(crate) async fn suspicious_ips(s: &Stack, now: DateTime<Utc>) {
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

pub(crate) async fn statistics(s: &Stack) {
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

pub(crate) fn kinds(feed: &Value) -> Vec<&str> {
    feed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect()
}

pub(crate) async fn feed(s: &Stack) {
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

pub(crate) async fn vm_attacks(s: &Stack) {
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

//! Thresholds that block: per VM and global on two sensors sharing Redis, dry run, and counts across a restart.

use super::*;

/// A second sensor on the same Redis, without an API (it only enforces what it is sent).
pub(crate) async fn plain_sensor(
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

pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
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

//! One VM's agent aims the automatic response at its own VM only.

use super::*;
use crate::blocking::{eventually, plain_sensor};

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

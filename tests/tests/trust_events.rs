//! Host events cannot aim the response at an address the sensor depends on: agents' failed logins
//! for a `[trust] never_block` address raise a `refused` alert and block nothing in the kernel, on
//! the API stack the daemon runs (real datapath, checked with BPF_PROG_TEST_RUN).

use std::net::{IpAddr, Ipv4Addr};

use netguard_common::tcp_flags as tf;
use netguard_tests::api_stack::{AGENT, AGENT_VM, Stack, StackOptions, http};
use netguard_tests::fixtures::{SEN, XDP_PASS, tcp};
use netguard_tests::frames::FrameSpec;
use netguard_tests::netns::require_root;
use netguard_user::trust::TrustConfig;
use serde_json::{Value, json};

fn syn_from(src: Ipv4Addr) -> Vec<u8> {
    FrameSpec::v4(src, SEN, tcp(40000, 22, tf::SYN as u8))
        .build()
        .bytes
}

fn failures(src: Ipv4Addr, n: u32) -> Value {
    let now = chrono::Utc::now().timestamp_millis() as u64 - 10_000;
    Value::Array(
        (0..n)
            .map(|i| json!({"source_vm_id": AGENT_VM, "ts": now + u64::from(i), "src_ip": src.to_string(),
                           "username": "root", "src_port": 41_000 + i, "event_type": "ssh_failed"}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_events_never_block_a_protected_address() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let protected = Ipv4Addr::new(192, 0, 2, 53);
    // `[trust] never_block`, as the config file gives it: the daemon's refresh keeps it protected.
    let opts = StackOptions {
        trust: TrustConfig {
            never_block: vec![IpAddr::V4(protected).into()],
            ..TrustConfig::default()
        },
        ..StackOptions::default()
    };
    let s = Stack::start(dir.path(), opts).await;

    // Five failures from one VM reach the per-VM threshold: for a protected address, refused.
    let resp = http(Some(AGENT))
        .post(s.url("/api/v1/events"))
        .json(&failures(protected, 5))
        .send()
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    let d = &report["decisions"][0];
    assert_eq!(d["action"], "refused", "{report}");
    assert!(
        d["refused"]
            .as_str()
            .unwrap()
            .contains("listed in [trust] never_block"),
        "{report}"
    );
    assert_eq!(
        s.verdict(&syn_from(protected)),
        XDP_PASS,
        "nothing in the kernel"
    );
    let listed: Value = http(Some(netguard_tests::api_stack::ADMIN))
        .get(s.url("/api/v1/blocklist"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "nothing in the blocklist: {listed}"
    );
    let alerts: Value = http(Some(AGENT))
        .get(s.url(&format!("/api/v1/alerts?src={protected}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    // Agents may not read alerts; the admin view is checked through the control plane.
    assert!(alerts.get("error").is_some(), "{alerts}");
    let stored = s
        .control
        .alerts(netguard_store::AlertQuery {
            limit: 10,
            class: None,
            src: Some(IpAddr::V4(protected)),
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:#?}");
    assert_eq!(stored[0].action, "refused");

    // The same failures for an unprotected address block it, on that VM (scope = the VM's id; this
    // stack is another sensor, so its own kernel is not asked to drop it).
    let other = Ipv4Addr::new(192, 0, 2, 99);
    let resp = http(Some(AGENT))
        .post(s.url("/api/v1/events"))
        .json(&failures(other, 5))
        .send()
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["decisions"][0]["action"], "blocked", "{report}");
    assert_eq!(report["decisions"][0]["scope"], AGENT_VM, "{report}");
    assert_eq!(s.verdict(&syn_from(other)), XDP_PASS);
    s.stop().await;
}

//! The per-address and per-VM reports on fixed events and alerts, without HTTP.

use super::*;

pub(in crate::api::multivm) fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub(in crate::api::multivm) fn ev(
    ip: &str,
    vm: &str,
    user: &str,
    ts: &str,
    failure: bool,
) -> HostEventRecord {
    HostEventRecord {
        fingerprint: "0".repeat(64),
        ts: t(ts),
        received_at: t(ts),
        src_ip: ip.parse().unwrap(),
        username: Some(user.into()),
        src_port: None,
        event_type: if failure {
            "ssh_failed"
        } else {
            "ssh_accepted"
        }
        .into(),
        service: "ssh".into(),
        failure,
        source_vm_id: vm.into(),
    }
}

pub(in crate::api::multivm) fn alert(
    ip: &str,
    vm: &str,
    class: &str,
    ts: &str,
    count: u32,
) -> Alert {
    Alert {
        id: format!("{vm}-{ts}"),
        ts: t(ts),
        sensor_id: vm.into(),
        class: class.into(),
        src_ip: ip.parse().unwrap(),
        dst_ip: None,
        dst_port: None,
        risk: 50,
        confidence: 1.0,
        mitre: "T1110".into(),
        action: "alerted".into(),
        evidence: Default::default(),
        count,
    }
}

#[test]
fn aggregation_counts_sorts_and_marks_blocks() {
    let events = [
        ev("203.0.113.1", "vm-a", "root", "2024-05-01T10:00:00Z", true),
        ev("203.0.113.1", "vm-b", "admin", "2024-05-01T11:00:00Z", true),
        ev("203.0.113.1", "vm-b", "root", "2024-05-01T09:00:00Z", true),
        ev("203.0.113.2", "vm-a", "bob", "2024-05-01T12:00:00Z", true),
        // Successes never make an address suspicious.
        ev(
            "203.0.113.3",
            "vm-a",
            "alice",
            "2024-05-01T12:00:00Z",
            false,
        ),
    ];
    let alerts = [
        alert(
            "203.0.113.2",
            "vm-c",
            "port_scan",
            "2024-05-01T13:00:00Z",
            3,
        ),
        alert(
            "198.51.100.9",
            "vm-a",
            "syn_flood",
            "2024-05-01T08:00:00Z",
            1,
        ),
    ];
    let blocks = BlockIndex::new(&[ListEntry::new(
        "203.0.113.0/24".parse().unwrap(),
        Scope::Sensor("vm-b".into()),
    )]);
    let out = aggregate(&events, &alerts, &blocks);
    let ips: Vec<String> = out.iter().map(|s| s.ip.to_string()).collect();
    assert_eq!(ips, ["203.0.113.1", "203.0.113.2", "198.51.100.9"]);
    let a = &out[0];
    assert_eq!((a.failures, a.alerts), (3, 0));
    assert_eq!(a.vms, ["vm-a", "vm-b"]);
    assert_eq!(a.usernames, ["admin", "root"]);
    assert_eq!(a.usernames_total, 2);
    assert_eq!(a.first_seen, t("2024-05-01T09:00:00Z"));
    assert_eq!(a.last_seen, t("2024-05-01T11:00:00Z"));
    assert!(a.blocked);
    assert_eq!(a.block_scopes, ["vm-b"]);
    let b = &out[1];
    assert_eq!((b.failures, b.alerts), (1, 3));
    assert_eq!(b.alert_classes.get("port_scan"), Some(&3));
    assert_eq!(b.vms, ["vm-a", "vm-c"]);
    assert!(!out[2].blocked && out[2].block_scopes.is_empty());
    assert!(out[2].services.is_empty());
}

#[test]
fn block_counts_by_source() {
    let mut a = ListEntry::new("203.0.113.0/24".parse().unwrap(), Scope::Global);
    let mut b = a.clone();
    b.source = EntrySource::Event;
    let c = b.clone();
    a.source = EntrySource::Auto;
    assert_eq!(
        BlockCounts::of(&[a, b, c]),
        BlockCounts {
            total: 3,
            manual: 0,
            auto: 1,
            feed: 0,
            event: 2
        }
    );
}

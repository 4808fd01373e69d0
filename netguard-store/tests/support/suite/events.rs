//! Host events: exactly-once by fingerprint within a retention window, and the capped, filtered,
//! paged history that the multi-VM API reads.

use std::sync::Arc;
use std::time::Duration;

use netguard_store::{DEFAULT_ALERT_CAP, EventQuery, HostEventRecord, StoreError};

use crate::support::{Harness, now_ms};

const HOUR: Duration = Duration::from_secs(3600);

/// Event number `n`: fingerprint derived from `n`, so equal `n` means "the same event".
fn event(n: u64, vm: &str, ip: &str, failure: bool) -> HostEventRecord {
    HostEventRecord {
        fingerprint: format!("{n:064x}"),
        ts: now_ms() - chrono::Duration::seconds(5),
        received_at: now_ms(),
        src_ip: ip.parse().expect("test ip"),
        username: Some(format!("user{n}")),
        src_port: Some(40_000 + (n % 1000) as u16),
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

fn all() -> EventQuery {
    EventQuery::default()
}

/// A fingerprint seen within the retention window is a duplicate (also inside one batch and after
/// reopening the store), is stored once, and does not change the stored copy.
pub async fn event_dedup_within_retention(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    assert!(store.events(&all()).await.unwrap().is_empty());
    assert!(store.record_events(&[], HOUR).await.unwrap().is_empty());

    let batch = vec![
        event(1, "vm-1", "10.0.0.1", true),
        event(2, "vm-1", "10.0.0.1", true),
        event(1, "vm-2", "10.0.0.9", true), // same fingerprint again inside the batch
        event(3, "vm-2", "10.0.0.2", false),
    ];
    assert_eq!(
        store.record_events(&batch, HOUR).await.unwrap(),
        [true, true, false, true]
    );
    // The retried batch: every item a duplicate, nothing stored twice.
    assert_eq!(
        store.record_events(&batch, HOUR).await.unwrap(),
        [false, false, false, false]
    );
    let stored = store.events(&all()).await.unwrap();
    assert_eq!(stored.len(), 3, "{stored:#?}");
    let first = stored
        .iter()
        .find(|e| e.fingerprint == batch[0].fingerprint);
    assert_eq!(
        first,
        Some(&batch[0]),
        "the first copy is kept, fields intact"
    );

    // Durable: a new process (store instance) still knows the fingerprints.
    drop(store);
    let store = h.open(DEFAULT_ALERT_CAP).await;
    let again = [
        event(2, "vm-1", "10.0.0.1", true),
        event(4, "vm-1", "10.0.0.1", true),
    ];
    assert_eq!(
        store.record_events(&again, HOUR).await.unwrap(),
        [false, true]
    );
    assert_eq!(store.events(&all()).await.unwrap().len(), 4);

    // A bad record fails the whole call and stores nothing.
    let mut bad = event(5, "vm-1", "10.0.0.1", true);
    bad.fingerprint = "NOT-HEX".into();
    let err = store
        .record_events(&[event(6, "vm-1", "10.0.0.1", true), bad], HOUR)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Invalid {
                field: "fingerprint",
                ..
            }
        ),
        "{err}"
    );
    let mut bad_vm = event(7, "vm-1", "10.0.0.1", true);
    bad_vm.source_vm_id = "global".into();
    assert!(matches!(
        store.record_events(&[bad_vm], HOUR).await.unwrap_err(),
        StoreError::Invalid {
            field: "source_vm_id",
            ..
        }
    ));
    assert_eq!(store.events(&all()).await.unwrap().len(), 4);
}

/// Once the retention window has passed, the same fingerprint is accepted (and stored) again.
pub async fn event_reaccept_after_retention(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    let short = Duration::from_millis(300);
    let e = event(1, "vm-1", "10.0.0.1", true);
    assert_eq!(
        store
            .record_events(std::slice::from_ref(&e), short)
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        store
            .record_events(std::slice::from_ref(&e), short)
            .await
            .unwrap(),
        [false]
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        store
            .record_events(std::slice::from_ref(&e), short)
            .await
            .unwrap(),
        [true]
    );
    // Re-accepted means a new window: a duplicate again right after.
    assert_eq!(
        store
            .record_events(std::slice::from_ref(&e), short)
            .await
            .unwrap(),
        [false]
    );
    assert_eq!(store.events(&all()).await.unwrap().len(), 2);
}

/// Concurrent posts of the same events (two store instances, as two API requests or two sensors
/// on one Redis) store each fingerprint exactly once: exactly one caller gets `true` per event.
pub async fn event_dedup_concurrent(h: &dyn Harness) {
    let a = h.open(DEFAULT_ALERT_CAP).await;
    // Embedded allows one open database per process: share the instance there.
    let b = if a.backend_name() == "redis" {
        h.open(DEFAULT_ALERT_CAP).await
    } else {
        Arc::clone(&a)
    };
    let batch: Vec<_> = (0..200)
        .map(|n| event(n, "vm-1", "10.0.0.1", true))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let batch = batch.clone();
        tasks.push(tokio::spawn(async move {
            store.record_events(&batch, HOUR).await.unwrap()
        }));
    }
    let mut new_per_event = vec![0; batch.len()];
    for task in tasks {
        for (i, new) in task.await.unwrap().into_iter().enumerate() {
            new_per_event[i] += usize::from(new);
        }
    }
    assert!(
        new_per_event.iter().all(|n| *n == 1),
        "each event new exactly once: {new_per_event:?}"
    );
    assert_eq!(a.events(&all()).await.unwrap().len(), batch.len());
}

/// Newest first, filters (vm, ip, since, failures only), offset and limit.
pub async fn event_query(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    let mut events = Vec::new();
    for n in 0..10u64 {
        let vm = if n % 2 == 0 { "vm-a" } else { "vm-b" };
        let ip = if n < 5 { "10.0.0.1" } else { "2001:db8::5" };
        let mut e = event(n, vm, ip, n != 3);
        e.received_at = now_ms() + chrono::Duration::milliseconds(n as i64);
        events.push(e);
    }
    // In two posts, so order across calls is tested too.
    store.record_events(&events[..4], HOUR).await.unwrap();
    store.record_events(&events[4..], HOUR).await.unwrap();
    let fps = |list: Vec<HostEventRecord>| -> Vec<u64> {
        list.iter()
            .map(|e| u64::from_str_radix(&e.fingerprint, 16).unwrap())
            .collect()
    };
    assert_eq!(
        fps(store.events(&all()).await.unwrap()),
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    );
    let vm_a = EventQuery {
        vm_id: Some("vm-a".into()),
        ..all()
    };
    assert_eq!(fps(store.events(&vm_a).await.unwrap()), [8, 6, 4, 2, 0]);
    let page = EventQuery {
        offset: 1,
        limit: 2,
        ..vm_a.clone()
    };
    assert_eq!(fps(store.events(&page).await.unwrap()), [6, 4]);
    let past_end = EventQuery { offset: 5, ..vm_a };
    assert!(store.events(&past_end).await.unwrap().is_empty());
    let v6 = EventQuery {
        src_ip: Some("2001:db8::5".parse().unwrap()),
        ..all()
    };
    assert_eq!(fps(store.events(&v6).await.unwrap()), [9, 8, 7, 6, 5]);
    let failures_from_1 = EventQuery {
        src_ip: Some("10.0.0.1".parse().unwrap()),
        failures_only: true,
        ..all()
    };
    assert_eq!(
        fps(store.events(&failures_from_1).await.unwrap()),
        [4, 2, 1, 0]
    );
    let since = EventQuery {
        since: Some(events[7].received_at),
        ..all()
    };
    assert_eq!(fps(store.events(&since).await.unwrap()), [9, 8, 7]);
    let unknown_vm = EventQuery {
        vm_id: Some("vm-zzz".into()),
        ..all()
    };
    assert!(store.events(&unknown_vm).await.unwrap().is_empty());
}

/// The history keeps only the newest `cap` events; fingerprints outlive trimming, so a trimmed
/// event is still a duplicate within its retention.
pub async fn event_cap(h: &dyn Harness) {
    let cap = 5;
    let store = h.open(cap).await;
    let events: Vec<_> = (0..8).map(|n| event(n, "vm-1", "10.0.0.1", true)).collect();
    store.record_events(&events[..3], HOUR).await.unwrap();
    store.record_events(&events[3..], HOUR).await.unwrap();
    let stored = store.events(&all()).await.unwrap();
    let want: Vec<_> = events.iter().rev().take(cap).cloned().collect();
    assert_eq!(stored, want, "exactly the newest {cap}, newest first");
    assert_eq!(
        store.record_events(&events[..1], HOUR).await.unwrap(),
        [false],
        "a trimmed event is still a duplicate"
    );
}

/// Fingerprints are capped: past the cap, the ones that would expire soonest are dropped, so the
/// oldest event can be counted again while the newest are still duplicates. Storage stays bounded
/// whatever an agent posts.
pub async fn event_fingerprint_cap(h: &dyn Harness) {
    let store = h.open_with(DEFAULT_ALERT_CAP, 4).await;
    let events: Vec<_> = (0..6).map(|n| event(n, "vm-1", "10.0.0.1", true)).collect();
    for e in &events {
        assert_eq!(
            store
                .record_events(std::slice::from_ref(e), HOUR)
                .await
                .unwrap(),
            [true]
        );
        // Distinct expiry times, so "soonest to expire" is well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(
        store.record_events(&events[2..], HOUR).await.unwrap(),
        [false; 4],
        "the newest 4 are still duplicates"
    );
    assert_eq!(
        store.record_events(&events[..1], HOUR).await.unwrap(),
        [true],
        "the oldest fingerprint was dropped at the cap"
    );
}

//! The rest of the contract: alerts, sensors, kv, counters, persistence, health.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use netguard_store::{AlertQuery, DEFAULT_ALERT_CAP, ListKind, Scope, Sensor, StoreError};

use crate::support::{Harness, alert, entry, now_ms};

/// Newest first, filters, limit, and the history cap.
pub async fn alerts(h: &dyn Harness) {
    let cap = 5;
    let store = h.open(cap).await;
    assert!(
        store
            .alerts(AlertQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    let classes = ["port_scan", "syn_flood"];
    let all: Vec<_> = (1..=8)
        .map(|n| {
            alert(
                n,
                classes[n as usize % 2],
                if n <= 4 { "10.0.0.1" } else { "10.0.0.2" },
            )
        })
        .collect();
    for a in &all {
        store.append_alert(a).await.unwrap();
    }
    let newest: Vec<_> = all.iter().rev().take(cap).cloned().collect();
    let got = store
        .alerts(AlertQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        got, newest,
        "exactly the newest {cap}, newest first, fields intact"
    );

    let got = store
        .alerts(AlertQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got, newest[..2].to_vec());

    let port_scans = AlertQuery {
        limit: 100,
        class: Some("port_scan".into()),
        src: None,
    };
    let ids: Vec<_> = store
        .alerts(port_scans)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["alert-8", "alert-6", "alert-4"]);

    let from_1 = AlertQuery {
        limit: 100,
        class: None,
        src: Some("10.0.0.1".parse().unwrap()),
    };
    let ids: Vec<_> = store
        .alerts(from_1)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["alert-4"], "alerts 1-3 are beyond the cap");

    let both = AlertQuery {
        limit: 1,
        class: Some("syn_flood".into()),
        src: Some("10.0.0.2".parse().unwrap()),
    };
    let ids: Vec<_> = store
        .alerts(both)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["alert-7"]);
}

/// Register, update, list sorted by id, remove idempotently; reserved ids are refused.
pub async fn sensors(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    let mut labels = BTreeMap::new();
    labels.insert("site".to_owned(), "lab".to_owned());
    let b = Sensor {
        id: "vm-b".into(),
        name: None,
        registered_at: now_ms(),
        labels,
    };
    let mut a = Sensor {
        id: "vm-a".into(),
        name: Some("A".into()),
        registered_at: now_ms(),
        labels: BTreeMap::new(),
    };
    store.put_sensor(&b).await.unwrap();
    store.put_sensor(&a).await.unwrap();
    assert_eq!(
        store.list_sensors().await.unwrap(),
        vec![a.clone(), b.clone()]
    );
    a.name = Some("renamed".into());
    store.put_sensor(&a).await.unwrap();
    assert_eq!(store.list_sensors().await.unwrap(), vec![a, b.clone()]);
    assert!(store.remove_sensor("vm-a").await.unwrap());
    assert!(!store.remove_sensor("vm-a").await.unwrap());
    assert_eq!(store.list_sensors().await.unwrap(), vec![b]);
    let bad = Sensor {
        id: "global".into(),
        name: None,
        registered_at: now_ms(),
        labels: BTreeMap::new(),
    };
    assert!(matches!(
        store.put_sensor(&bad).await,
        Err(StoreError::Invalid { .. })
    ));
}

/// Opaque bytes in, the same bytes out; the last write wins.
pub async fn kv(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    assert_eq!(store.kv_get("authlog.offset").await.unwrap(), None);
    store.kv_put("authlog.offset", b"1234").await.unwrap();
    store
        .kv_put("authlog.inode", &[0, 255, 1, 128])
        .await
        .unwrap();
    store.kv_put("authlog.offset", b"5678").await.unwrap();
    assert_eq!(
        store.kv_get("authlog.offset").await.unwrap(),
        Some(b"5678".to_vec())
    );
    assert_eq!(
        store.kv_get("authlog.inode").await.unwrap(),
        Some(vec![0, 255, 1, 128])
    );
    store.kv_put("empty", b"").await.unwrap();
    assert_eq!(store.kv_get("empty").await.unwrap(), Some(Vec::new()));
}

/// Counters add up and list by name.
pub async fn counters(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    assert!(store.counters().await.unwrap().is_empty());
    assert_eq!(store.incr_counter("alerts_total", 1).await.unwrap(), 1);
    assert_eq!(store.incr_counter("alerts_total", 5).await.unwrap(), 6);
    assert_eq!(store.incr_counter("blocks_total", 2).await.unwrap(), 2);
    assert_eq!(store.incr_counter("blocks_total", 0).await.unwrap(), 2);
    let expected: BTreeMap<_, _> = [
        ("alerts_total".to_owned(), 6),
        ("blocks_total".to_owned(), 2),
    ]
    .into();
    assert_eq!(store.counters().await.unwrap(), expected);
}

/// A fresh store over the same state (reopened file, new Redis client) sees everything.
pub async fn persistence(h: &dyn Harness) {
    let mut ttl = entry("192.0.2.0/24", Scope::Global);
    ttl.expires_at = Some(now_ms() + Duration::hours(4));
    let permanent = entry("2001:db8:1::/48", Scope::Sensor("vm-9".into()));
    let sensor = Sensor {
        id: "vm-9".into(),
        name: None,
        registered_at: now_ms(),
        labels: BTreeMap::new(),
    };
    {
        let store = h.open(10).await;
        store
            .put_entries(ListKind::Block, &[ttl.clone(), permanent.clone()])
            .await
            .unwrap();
        store
            .put_entries(ListKind::Allow, std::slice::from_ref(&permanent))
            .await
            .unwrap();
        store
            .append_alert(&alert(1, "port_scan", "10.0.0.1"))
            .await
            .unwrap();
        store
            .append_alert(&alert(2, "syn_flood", "10.0.0.2"))
            .await
            .unwrap();
        store.put_sensor(&sensor).await.unwrap();
        store.kv_put("authlog.offset", b"42").await.unwrap();
        store.incr_counter("alerts_total", 2).await.unwrap();
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the test must drop the only handle"
        );
    }
    let store = h.open(10).await;
    assert_eq!(
        store.list_entries(ListKind::Block).await.unwrap(),
        vec![ttl.clone(), permanent.clone()]
    );
    assert_eq!(
        store.list_entries(ListKind::Allow).await.unwrap(),
        vec![permanent]
    );
    assert_eq!(
        store.next_expiry(ListKind::Block).await.unwrap(),
        ttl.expires_at
    );
    let ids: Vec<_> = store
        .alerts(AlertQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["alert-2", "alert-1"]);
    assert_eq!(store.list_sensors().await.unwrap(), vec![sensor]);
    assert_eq!(
        store.kv_get("authlog.offset").await.unwrap(),
        Some(b"42".to_vec())
    );
    assert_eq!(store.incr_counter("alerts_total", 1).await.unwrap(), 3);
    // Alert order continues across the reopen.
    store
        .append_alert(&alert(3, "port_scan", "10.0.0.3"))
        .await
        .unwrap();
    let ids: Vec<_> = store
        .alerts(AlertQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["alert-3", "alert-2", "alert-1"]);
}

/// Health and identity.
pub async fn ping_and_name(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    store.ping().await.unwrap();
    assert!(["redis", "embedded"].contains(&store.backend_name()));
}

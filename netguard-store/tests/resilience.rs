//! `ResilientStore` over a real redis-server that is killed and restarted: writes made during the
//! outage queue and all arrive, in order; reads fail fast meanwhile; a full queue says so.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use netguard_store::{
    AlertQuery, ListKind, RedisStore, ResilientConfig, ResilientStore, Scope, Sensor, Store,
    StoreError,
};
use support::{RedisHarness, RedisServer, alert, entry, now_ms};

fn quick_retries(capacity: usize) -> ResilientConfig {
    ResilientConfig {
        capacity,
        list_capacity: capacity,
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    }
}

/// Replays until the queue is empty; the bound only turns a stuck queue into a failure.
async fn flush_until_done<S: Store + 'static>(store: &ResilientStore<S>) {
    for _ in 0..200 {
        if store.flush().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("queue not replayed: {} writes still queued", store.queued());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_an_outage_arrive_in_order() {
    let mut h = RedisHarness {
        server: RedisServer::start(true),
        prefix: "resilience".into(),
    };
    let redis = RedisStore::connect(h.config("sensor-1")).await.unwrap();
    let store = ResilientStore::new(Arc::new(redis), quick_retries(1000));

    let before = entry("10.0.0.0/8", Scope::Global);
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&before))
        .await
        .unwrap();
    store.incr_counter("blocks_total", 1).await.unwrap();
    assert_eq!(store.queued(), 0);

    h.server.kill();

    // Writes whose order matters: each pair only ends right if replayed in order.
    let kept = entry("192.0.2.0/24", Scope::Global);
    let mut flip_first = entry("198.51.100.0/24", Scope::Sensor("sensor-1".into()));
    flip_first.reason = Some("first".into());
    let mut flip_second = flip_first.clone();
    flip_second.reason = Some("second".into());
    let gone = entry("203.0.113.0/24", Scope::Global);

    store
        .put_entries(ListKind::Block, std::slice::from_ref(&kept))
        .await
        .unwrap();
    assert!(
        store
            .remove_entry(ListKind::Block, &before.cidr, &Scope::Global)
            .await
            .unwrap()
    );
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&flip_first))
        .await
        .unwrap();
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&flip_second))
        .await
        .unwrap();
    store
        .put_entries(ListKind::Allow, std::slice::from_ref(&gone))
        .await
        .unwrap();
    store
        .remove_entry(ListKind::Allow, &gone.cidr, &Scope::Global)
        .await
        .unwrap();
    for n in 1..=5 {
        store
            .append_alert(&alert(n, "port_scan", "10.0.0.1"))
            .await
            .unwrap();
    }
    store.kv_put("authlog.offset", b"100").await.unwrap();
    store.kv_put("authlog.offset", b"200").await.unwrap();
    // While queued, the counter answers an estimate: last known total plus queued increments.
    assert_eq!(store.incr_counter("blocks_total", 2).await.unwrap(), 3);
    let sensor = Sensor {
        id: "sensor-1".into(),
        name: Some("edge".into()),
        registered_at: now_ms(),
        labels: BTreeMap::new(),
    };
    store.put_sensor(&sensor).await.unwrap();
    assert_eq!(
        store.queued(),
        15,
        "every write made during the outage is queued"
    );

    // Reads fail fast and say why, instead of showing state without our own writes.
    let err = store.list_entries(ListKind::Block).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(store.ping().await.is_err());
    assert!(store.flush().await.unwrap_err().is_unavailable());

    h.server.restart();
    flush_until_done(&store).await;
    assert_eq!(store.queued(), 0);
    assert_eq!(store.dropped(), 0);

    assert_eq!(
        store.list_entries(ListKind::Block).await.unwrap(),
        vec![kept, flip_second],
        "10.0.0.0/8 removed after the restart-surviving put; the second flip wins"
    );
    assert!(
        store
            .list_entries(ListKind::Allow)
            .await
            .unwrap()
            .is_empty()
    );
    let ids: Vec<_> = store
        .alerts(AlertQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["alert-5", "alert-4", "alert-3", "alert-2", "alert-1"]);
    assert_eq!(
        store.kv_get("authlog.offset").await.unwrap(),
        Some(b"200".to_vec())
    );
    assert_eq!(store.counters().await.unwrap()["blocks_total"], 3);
    assert_eq!(store.list_sensors().await.unwrap(), vec![sensor]);

    // And the live path works again without queueing.
    store.incr_counter("blocks_total", 1).await.unwrap();
    assert_eq!(store.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_task_replays_without_being_asked() {
    let mut h = RedisHarness {
        server: RedisServer::start(true),
        prefix: "replay".into(),
    };
    let redis = RedisStore::connect(h.config("sensor-1")).await.unwrap();
    let store = ResilientStore::new(Arc::new(redis), quick_retries(100));
    h.server.kill();
    store.kv_put("k", b"v").await.unwrap();
    assert_eq!(store.queued(), 1);
    h.server.restart();
    // No flush(): wait (bounded) for the retry task to drain the queue on its own.
    for _ in 0..200 {
        if store.queued() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.queued(), 0, "retry task did not replay the queue");
    assert_eq!(store.kv_get("k").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_says_the_write_was_not_saved() {
    let mut h = RedisHarness::start();
    let redis = RedisStore::connect(h.config("sensor-1")).await.unwrap();
    let location = redis.location().to_owned();
    let store = ResilientStore::new(Arc::new(redis), quick_retries(2));
    h.server.kill();
    store.kv_put("a", b"1").await.unwrap();
    store.kv_put("b", b"2").await.unwrap();
    let err = store.kv_put("c", b"3").await.unwrap_err();
    assert!(
        matches!(err, StoreError::QueueFull { capacity: 2, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("NOT saved") && message.contains(&location),
        "{message}"
    );
    assert_eq!(store.queued(), 2);

    // Invalid writes are refused at once, not queued to fail later.
    let bad = entry("10.0.0.1/8", Scope::Global);
    let err = store
        .put_entries(ListKind::Block, &[bad])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err:?}");
}

fn host_event(n: u64) -> netguard_store::HostEventRecord {
    netguard_store::HostEventRecord {
        fingerprint: format!("{n:064x}"),
        ts: now_ms(),
        received_at: now_ms(),
        src_ip: "10.0.0.7".parse().unwrap(),
        username: Some("root".into()),
        src_port: Some(50_000),
        event_type: "ssh_failed".into(),
        service: "ssh".into(),
        failure: true,
        source_vm_id: "sensor-1".into(),
    }
}

/// Host events during an outage: a retried batch is answered as duplicates from local memory
/// (also for events recorded before the outage), the queued batch is replayed on recovery, and
/// the stored history holds every event once, even one that another sensor recorded meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_events_during_an_outage_are_not_double_counted() {
    let hour = Duration::from_secs(3600);
    let mut h = RedisHarness {
        server: RedisServer::start(true),
        prefix: "resilience-events".into(),
    };
    let redis = RedisStore::connect(h.config("sensor-1")).await.unwrap();
    // The background retry waits 30 s (before its first try too), so that our queue is replayed only
    // by the explicit flush below: the other sensor's write must land first, whatever the scheduling.
    let slow_retries = ResilientConfig {
        capacity: 1000,
        list_capacity: 1000,
        min_backoff: Duration::from_secs(30),
        max_backoff: Duration::from_secs(30),
    };
    let store = ResilientStore::new(Arc::new(redis), slow_retries);
    assert_eq!(
        store.record_events(&[host_event(1)], hour).await.unwrap(),
        [true]
    );

    h.server.kill();
    let batch = [host_event(1), host_event(2), host_event(3)];
    assert_eq!(
        store.record_events(&batch, hour).await.unwrap(),
        [false, true, true],
        "event 1 is remembered from before the outage"
    );
    assert_eq!(
        store.record_events(&batch, hour).await.unwrap(),
        [false, false, false],
        "the retried batch is all duplicates"
    );
    assert!(store.queued() >= 1);

    h.server.restart();
    // Another sensor records event 3 before our queue is replayed.
    let other = RedisStore::connect(h.config("sensor-2")).await.unwrap();
    assert_eq!(
        other.record_events(&[host_event(3)], hour).await.unwrap(),
        [true]
    );
    flush_until_done(&store).await;
    let stored = store
        .events(&netguard_store::EventQuery::default())
        .await
        .unwrap();
    let mut fps: Vec<_> = stored.iter().map(|e| e.fingerprint.clone()).collect();
    fps.sort();
    assert_eq!(
        fps,
        [host_event(1), host_event(2), host_event(3)].map(|e| e.fingerprint),
        "each event stored exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_still_queued_at_shutdown_are_kept_and_replayed_by_the_next_process() {
    use netguard_store::QueuedWrite;
    use netguard_store::resilient::{describe, replay};
    let mut h = RedisHarness {
        server: RedisServer::start(true),
        prefix: "shutdown".into(),
    };
    let redis = RedisStore::connect(h.config("sensor-1")).await.unwrap();
    let store = ResilientStore::new(Arc::new(redis), quick_retries(100));
    let old = entry("198.51.100.0/24", Scope::Global);
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&old))
        .await
        .unwrap();
    h.server.kill();
    let new = entry("192.0.2.0/24", Scope::Global);
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&new))
        .await
        .unwrap();
    store
        .remove_entry(ListKind::Block, &old.cidr, &old.scope)
        .await
        .unwrap();
    store.kv_put("authlog:/x", b"42").await.unwrap();
    // Shutdown: a bounded flush fails, and the queue is taken whole, in order.
    let flushed = tokio::time::timeout(Duration::from_secs(2), store.flush()).await;
    assert!(
        !matches!(flushed, Ok(Ok(()))),
        "flushed with the server down"
    );
    let left = Store::take_queued(&store).await;
    assert_eq!(store.queued(), 0);
    assert_eq!(left.len(), 3);
    assert_eq!(
        describe(&left),
        "1 blocklist puts, 1 blocklist removals, 1 key/value puts (auth-log position)"
    );
    let json = serde_json::to_vec(&left).unwrap();
    drop(store);

    // The next process: the server is back, a new store replays what the old one kept.
    h.server.restart();
    let kept: Vec<QueuedWrite> = serde_json::from_slice(&json).unwrap();
    assert_eq!(kept, left);
    let redis = RedisStore::connect(h.config("sensor-1")).await.unwrap();
    let store = ResilientStore::new(Arc::new(redis), quick_retries(100));
    replay(&store, &kept).await.unwrap();
    let cidrs: Vec<_> = store
        .list_entries(ListKind::Block)
        .await
        .unwrap()
        .iter()
        .map(|e| e.cidr)
        .collect();
    assert_eq!(cidrs, [new.cidr]);
    assert_eq!(
        store.kv_get("authlog:/x").await.unwrap(),
        Some(b"42".to_vec())
    );
}

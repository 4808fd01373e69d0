//! Fleet behaviour that only the Redis backend has: several sensors on one Redis see each other's
//! entry changes through `<prefix>:changes`, and prefixes keep fleets apart.

mod support;

use std::time::Duration;

use chrono::Duration as ChronoDuration;
use netguard_store::{
    ChangeEvent, ChangeReceiver, EntryChange, ListKind, RedisStore, Scope, Store, StoreError,
};
use support::{MISSING_REDIS, RedisHarness, entry, find_redis_server, now_ms};

/// Waits for the next event; the bound only turns a lost message into a failure, not a hang.
async fn next_event(rx: &mut ChangeReceiver) -> ChangeEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no change arrived within 10 s")
        .expect("change channel closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_block_on_one_sensor_reaches_another() {
    let h = RedisHarness::start();
    let sensor_a = RedisStore::connect(h.config("sensor-a")).await.unwrap();
    let sensor_b = RedisStore::connect(h.config("sensor-b")).await.unwrap();
    // Through the trait object, as the daemon will use it.
    let b: &dyn Store = &sensor_b;
    let mut b_changes = b
        .subscribe_changes()
        .await
        .unwrap()
        .expect("redis is shared");

    let block = entry("198.51.100.0/24", Scope::Global);
    sensor_a
        .put_entries(ListKind::Block, std::slice::from_ref(&block))
        .await
        .unwrap();
    let expected = EntryChange::Put {
        kind: ListKind::Block,
        entry: block.clone(),
        origin: "sensor-a".into(),
    };
    assert_eq!(
        next_event(&mut b_changes).await,
        ChangeEvent::Change(expected)
    );
    assert_eq!(
        b.list_entries(ListKind::Block).await.unwrap(),
        vec![block.clone()]
    );

    // B's own writes are not echoed back to B: the next event B sees is A's removal.
    let own = entry("192.0.2.0/24", Scope::Sensor("sensor-b".into()));
    b.put_entries(ListKind::Allow, std::slice::from_ref(&own))
        .await
        .unwrap();
    assert!(
        sensor_a
            .remove_entry(ListKind::Block, &block.cidr, &Scope::Global)
            .await
            .unwrap()
    );
    let expected = EntryChange::Remove {
        kind: ListKind::Block,
        cidr: block.cidr,
        scope: Scope::Global,
        expired: false,
        origin: "sensor-a".into(),
    };
    assert_eq!(
        next_event(&mut b_changes).await,
        ChangeEvent::Change(expected)
    );

    // A removal that removes nothing announces nothing; an expiry is announced as expired.
    assert!(
        !sensor_a
            .remove_entry(ListKind::Block, &block.cidr, &Scope::Global)
            .await
            .unwrap()
    );
    let mut ttl = entry("203.0.113.0/24", Scope::Global);
    ttl.expires_at = Some(now_ms() + ChronoDuration::seconds(30));
    sensor_a
        .put_entries(ListKind::Block, std::slice::from_ref(&ttl))
        .await
        .unwrap();
    let taken = sensor_a
        .take_expired(ListKind::Block, ttl.expires_at.unwrap())
        .await
        .unwrap();
    assert_eq!(taken, vec![ttl.clone()]);
    // Only one sensor gets an expiry to act on.
    assert!(
        b.take_expired(ListKind::Block, ttl.expires_at.unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    let put = next_event(&mut b_changes).await;
    assert!(
        matches!(put, ChangeEvent::Change(EntryChange::Put { .. })),
        "{put:?}"
    );
    let expected = EntryChange::Remove {
        kind: ListKind::Block,
        cidr: ttl.cidr,
        scope: Scope::Global,
        expired: true,
        origin: "sensor-a".into(),
    };
    assert_eq!(
        next_event(&mut b_changes).await,
        ChangeEvent::Change(expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_shares_lists_but_not_kv_or_counters() {
    let h = RedisHarness::start();
    let a = RedisStore::connect(h.config("sensor-a")).await.unwrap();
    let b = RedisStore::connect(h.config("sensor-b")).await.unwrap();
    a.kv_put("authlog.offset", b"10").await.unwrap();
    a.incr_counter("alerts_total", 3).await.unwrap();
    assert_eq!(b.kv_get("authlog.offset").await.unwrap(), None);
    assert!(b.counters().await.unwrap().is_empty());

    // A different prefix is a different fleet on the same server.
    let mut other_config = h.config("sensor-a");
    other_config.prefix = format!("{}-other", h.prefix);
    let other = RedisStore::connect(other_config).await.unwrap();
    a.put_entries(ListKind::Block, &[entry("10.0.0.0/8", Scope::Global)])
        .await
        .unwrap();
    assert_eq!(b.list_entries(ListKind::Block).await.unwrap().len(), 1);
    assert!(
        other
            .list_entries(ListKind::Block)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_says_what_to_do() {
    // Reserve a port, then close it, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = netguard_store::RedisConfig::new(format!("redis://127.0.0.1:{port}"), "s1");
    let Err(err) = RedisStore::connect(config).await else {
        panic!("connected to a closed port");
    };
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("redis at redis://127.0.0.1:{port} is unreachable")),
        "{message}"
    );
    assert!(
        message.contains("start redis-server or omit --redis"),
        "{message}"
    );

    let bad = netguard_store::RedisConfig::new("http://nope", "s1");
    assert!(matches!(
        RedisStore::connect(bad).await,
        Err(StoreError::Invalid { .. })
    ));
}

#[test]
fn missing_redis_server_fails_with_setup_hint() {
    // The harness turns this into a panic (a failed test), never a skip.
    let dir = tempfile::tempdir().unwrap();
    let err = find_redis_server(&dir.path().display().to_string()).unwrap_err();
    assert_eq!(err, MISSING_REDIS);
    assert_eq!(find_redis_server("").unwrap_err(), MISSING_REDIS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_with_a_redis_url_picks_resilient_redis() {
    let h = RedisHarness::start();
    let dir = tempfile::tempdir().unwrap();
    let mut options = netguard_store::StoreOptions::new(dir.path(), "sensor-1");
    options.redis_url = Some(h.server.url());
    options.redis_prefix.clone_from(&h.prefix);
    let store = netguard_store::open(&options).await.unwrap();
    assert_eq!(store.backend_name(), "redis");
    store.ping().await.unwrap();
    assert!(store.subscribe_changes().await.unwrap().is_some());
    // Nothing is written to the state dir when Redis holds the state.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_drops_entries_that_no_sensor_expired_after_the_grace() {
    let h = RedisHarness::start();
    let mut config = h.config("sensor-a");
    config.expire_grace = Duration::ZERO;
    let store = RedisStore::connect(config).await.unwrap();
    let mut stale = entry("203.0.113.0/24", Scope::Global);
    stale.expires_at = Some(now_ms() - ChronoDuration::seconds(5));
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&stale))
        .await
        .unwrap();
    // PEXPIREAT in the past deletes the hash at once; the indexes are cleaned on the next take.
    let client = redis::Client::open(h.server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:entry:block:{}", h.prefix, stale.id());
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "{key} should have been expired by Redis");
    assert!(
        store
            .list_entries(ListKind::Block)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .take_expired(ListKind::Block, now_ms())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_expiry(ListKind::Block).await.unwrap(), None);
}

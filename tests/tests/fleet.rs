//! Several sensors on one real Redis, through the same `Control` the daemon uses, with the kernel
//! checked by BPF_PROG_TEST_RUN:
//! - a global block made on one sensor is enforced by the other's kernel; a block scoped to one sensor
//!   is enforced only there;
//! - with redis-server killed, blocks are still enforced at once and queued; after it restarts they
//!   are in the store, and a freshly started sensor restores them.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netguard_store::{EntrySource, ListKind, StoreOptions};
use netguard_tests::{
    fixtures::{XDP_DROP, XDP_PASS, load_small, tcp},
    frames::FrameSpec,
    netns::require_root,
    redis_server::RedisServer,
};
use netguard_user::{
    control::{Control, ControlConfig, EntryRequest},
    datapath::Datapath,
};

const SENSOR: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);

async fn sensor(redis: &RedisServer, id: &str) -> (Control, Arc<Mutex<Datapath>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path(), id);
    opts.redis_url = Some(redis.url());
    let store = netguard_store::open(&opts).await.expect("open redis store");
    let dp = Arc::new(Mutex::new(load_small()));
    let cfg = ControlConfig {
        sensor_id: id.into(),
        ..ControlConfig::default()
    };
    let control = Control::start(cfg, dp.clone(), store).await.expect("control starts");
    (control, dp)
}

fn verdict(dp: &Arc<Mutex<Datapath>>, src: Ipv4Addr) -> u32 {
    let f = FrameSpec::v4(src, SENSOR, tcp(40000, 22, 2)).build();
    dp.lock().unwrap().test_run(&f.bytes).expect("test run")
}

async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn block(cidr: &str, scope: Option<&str>) -> Vec<EntryRequest> {
    vec![EntryRequest {
        cidr: cidr.into(),
        scope: scope.map(String::from),
        reason: Some("fleet test".into()),
        ..Default::default()
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_and_scoped_blocks_reach_the_right_kernels() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    let (a, dp_a) = sensor(&redis, "sensor-a").await;
    let (_b, dp_b) = sensor(&redis, "sensor-b").await;
    let attacker = Ipv4Addr::new(203, 0, 113, 9);

    a.put(ListKind::Block, &block("203.0.113.0/24", None), EntrySource::Manual).await.unwrap();
    assert_eq!(verdict(&dp_a, attacker), XDP_DROP);
    eventually("global block on sensor-b", Duration::from_secs(5), || verdict(&dp_b, attacker) == XDP_DROP).await;

    // Scoped to sensor-b: b enforces it, a only stores it.
    let other = Ipv4Addr::new(198, 51, 100, 7);
    a.put(ListKind::Block, &block("198.51.100.7", Some("sensor-b")), EntrySource::Manual).await.unwrap();
    eventually("scoped block on sensor-b", Duration::from_secs(5), || verdict(&dp_b, other) == XDP_DROP).await;
    assert_eq!(verdict(&dp_a, other), XDP_PASS, "sensor-a must not enforce sensor-b's entry");

    // Removal on a reaches b too.
    assert_eq!(a.remove(ListKind::Block, "203.0.113.0/24", None).await.unwrap(), 1);
    eventually("unblock on sensor-b", Duration::from_secs(5), || verdict(&dp_b, attacker) == XDP_PASS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_enforcing_and_loses_nothing() {
    if !require_root() {
        return;
    }
    let mut redis = RedisServer::start();
    let (a, dp_a) = sensor(&redis, "sensor-a").await;
    a.put(ListKind::Block, &block("192.0.2.0/24", None), EntrySource::Manual).await.unwrap();

    redis.kill();
    // While Redis is down: the old block still holds, and new blocks are enforced at once.
    assert_eq!(verdict(&dp_a, Ipv4Addr::new(192, 0, 2, 1)), XDP_DROP);
    let during = ["198.51.100.0/24", "203.0.113.77"];
    for cidr in during {
        a.put(ListKind::Block, &block(cidr, None), EntrySource::Manual)
            .await
            .unwrap_or_else(|e| panic!("a block during the outage was refused: {e}"));
    }
    assert_eq!(verdict(&dp_a, Ipv4Addr::new(198, 51, 100, 1)), XDP_DROP);
    assert_eq!(verdict(&dp_a, Ipv4Addr::new(203, 0, 113, 77)), XDP_DROP);

    redis.restart();
    // The queued writes land once Redis is back.
    let store = a.store().clone();
    let start = Instant::now();
    loop {
        let have: Vec<String> = match store.list_entries(ListKind::Block).await {
            Ok(l) => l.iter().map(|e| e.cidr.to_string()).collect(),
            Err(_) => Vec::new(),
        };
        if ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.77/32"].iter().all(|c| have.iter().any(|h| h == c)) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "queued writes did not reach Redis: {have:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A sensor started now (a restart, or a new host) restores all of them into its kernel.
    let (_c, dp_c) = sensor(&redis, "sensor-c").await;
    for src in [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(203, 0, 113, 77)] {
        assert_eq!(verdict(&dp_c, src), XDP_DROP, "{src} not restored from Redis");
    }
    assert_eq!(verdict(&dp_c, Ipv4Addr::new(203, 0, 113, 78)), XDP_PASS);
}

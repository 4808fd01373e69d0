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
    let control = Control::start(cfg, dp.clone(), store)
        .await
        .expect("control starts");
    (control, dp)
}

fn verdict(dp: &Arc<Mutex<Datapath>>, src: Ipv4Addr) -> u32 {
    let f = FrameSpec::v4(src, SENSOR, tcp(40000, 22, 2)).build();
    dp.lock().unwrap().test_run(&f.bytes).expect("test run")
}

async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
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

    a.put(
        ListKind::Block,
        &block("203.0.113.0/24", None),
        EntrySource::Manual,
    )
    .await
    .unwrap();
    assert_eq!(verdict(&dp_a, attacker), XDP_DROP);
    eventually("global block on sensor-b", Duration::from_secs(5), || {
        verdict(&dp_b, attacker) == XDP_DROP
    })
    .await;

    // Scoped to sensor-b: b enforces it, a only stores it.
    let other = Ipv4Addr::new(198, 51, 100, 7);
    a.put(
        ListKind::Block,
        &block("198.51.100.7", Some("sensor-b")),
        EntrySource::Manual,
    )
    .await
    .unwrap();
    eventually("scoped block on sensor-b", Duration::from_secs(5), || {
        verdict(&dp_b, other) == XDP_DROP
    })
    .await;
    assert_eq!(
        verdict(&dp_a, other),
        XDP_PASS,
        "sensor-a must not enforce sensor-b's entry"
    );

    // Removal on a reaches b too.
    assert_eq!(
        a.remove(ListKind::Block, "203.0.113.0/24", None)
            .await
            .unwrap(),
        1
    );
    eventually("unblock on sensor-b", Duration::from_secs(5), || {
        verdict(&dp_b, attacker) == XDP_PASS
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_enforcing_and_loses_nothing() {
    if !require_root() {
        return;
    }
    let mut redis = RedisServer::start();
    let (a, dp_a) = sensor(&redis, "sensor-a").await;
    a.put(
        ListKind::Block,
        &block("192.0.2.0/24", None),
        EntrySource::Manual,
    )
    .await
    .unwrap();

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
        if ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.77/32"]
            .iter()
            .all(|c| have.iter().any(|h| h == c))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "queued writes did not reach Redis: {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A sensor started now (a restart, or a new host) restores all of them into its kernel.
    let (_c, dp_c) = sensor(&redis, "sensor-c").await;
    for src in [
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(203, 0, 113, 77),
    ] {
        assert_eq!(
            verdict(&dp_c, src),
            XDP_DROP,
            "{src} not restored from Redis"
        );
    }
    assert_eq!(verdict(&dp_c, Ipv4Addr::new(203, 0, 113, 78)), XDP_PASS);
}

/// Polls an async condition until it holds.
async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored(control: &Control, cidr: &str) -> bool {
    control
        .store()
        .list_entries(ListKind::Block)
        .await
        .is_ok_and(|l| l.iter().any(|e| e.cidr.to_string() == cidr))
}

/// A Redis that refuses writes (out of memory, then a failed save with stop-writes-on-bgsave-error)
/// does not un-block anything: blocks made meanwhile are enforced, queued, and reach Redis once it
/// accepts writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_keep_the_kernel_entry_and_catch_up() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    let (a, dp_a) = sensor(&redis, "sensor-a").await;

    // OOM: a 1 MB limit with noeviction, filled past it.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&[
        "EVAL",
        "for i=1,3000 do redis.call('SET','junk:'..i, string.rep('x',1000)) end return 1",
        "0",
    ]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1mb"]);
    let probe = redis.cli(&["SET", "probe", "1"]);
    assert!(
        probe.contains("OOM"),
        "Redis is not refusing writes: {probe}"
    );
    a.put(
        ListKind::Block,
        &block("198.51.100.0/24", None),
        EntrySource::Manual,
    )
    .await
    .unwrap_or_else(|e| panic!("a block was refused because Redis is out of memory: {e}"));
    assert_eq!(
        verdict(&dp_a, Ipv4Addr::new(198, 51, 100, 9)),
        XDP_DROP,
        "the kernel must keep the block"
    );
    assert!(
        a.store().queued_writes() > 0,
        "the refused write must be queued"
    );
    let lists = a.store().queued_by_class();
    assert!(
        lists.iter().any(|(c, n)| c.label() == "lists" && *n == 1),
        "{lists:?}"
    );
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    eventually_async(
        "the OOM-time block reaching Redis",
        Duration::from_secs(20),
        || stored(&a, "198.51.100.0/24"),
    )
    .await;
    assert_eq!(verdict(&dp_a, Ipv4Addr::new(198, 51, 100, 9)), XDP_DROP);

    // MISCONF: snapshots on, the data dir gone, a BGSAVE that fails.
    redis.cli(&["CONFIG", "SET", "save", "3600 1"]);
    redis.cli(&["CONFIG", "SET", "stop-writes-on-bgsave-error", "yes"]);
    let dir = redis
        .cli(&["CONFIG", "GET", "dir"])
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(dir.starts_with('/'), "CONFIG GET dir: {dir:?}");
    std::fs::remove_dir_all(&dir).expect("remove the redis dir");
    redis.cli(&["BGSAVE"]);
    let start = Instant::now();
    loop {
        let probe = redis.cli(&["SET", "probe", "1"]);
        if probe.contains("MISCONF") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no MISCONF: {probe}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.put(
        ListKind::Block,
        &block("203.0.113.0/24", None),
        EntrySource::Manual,
    )
    .await
    .unwrap_or_else(|e| panic!("a block was refused because of MISCONF: {e}"));
    assert_eq!(verdict(&dp_a, Ipv4Addr::new(203, 0, 113, 9)), XDP_DROP);
    assert!(a.store().queued_writes() > 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !stored(&a, "203.0.113.0/24").await,
        "MISCONF did not refuse the write"
    );
    assert_eq!(
        verdict(&dp_a, Ipv4Addr::new(203, 0, 113, 9)),
        XDP_DROP,
        "retries must not undo the block"
    );
    redis.cli(&["CONFIG", "SET", "stop-writes-on-bgsave-error", "no"]);
    eventually_async(
        "the MISCONF-time block reaching Redis",
        Duration::from_secs(20),
        || stored(&a, "203.0.113.0/24"),
    )
    .await;
    assert_eq!(a.store().queued_writes(), 0);
}

/// One damaged entry in Redis: a sensor still starts, enforces the rest, and says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_entry_is_skipped_with_one_alert() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    let (a, _dp_a) = sensor(&redis, "sensor-a").await;
    a.put(
        ListKind::Block,
        &block("192.0.2.0/24", None),
        EntrySource::Manual,
    )
    .await
    .unwrap();
    redis.cli(&[
        "HSET",
        "netguard:entry:block:garbage@global",
        "cidr",
        "not-a-cidr",
        "scope",
        "global",
        "source",
        "manual",
        "created_at",
        "yesterday",
    ]);
    redis.cli(&["SADD", "netguard:entries:block", "garbage@global"]);

    let (b, dp_b) = sensor(&redis, "sensor-b").await;
    assert_eq!(
        verdict(&dp_b, Ipv4Addr::new(192, 0, 2, 1)),
        XDP_DROP,
        "the good entry must be enforced"
    );
    assert_eq!(
        b.counters()[0].get(),
        1,
        "netguard_store_malformed_entries_total"
    );
    let alerts = b
        .alerts(netguard_store::AlertQuery::default())
        .await
        .unwrap();
    let malformed: Vec<_> = alerts
        .iter()
        .filter(|a| a.class == "store_malformed_entry" && a.sensor_id == "sensor-b")
        .collect();
    assert_eq!(malformed.len(), 1, "{alerts:?}");
}

/// A change from another sensor that this one would refuse locally is refused here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_changes_are_validated() {
    if !require_root() {
        return;
    }
    let redis = RedisServer::start();
    let (b, dp_b) = sensor(&redis, "sensor-b").await;
    b.put(
        ListKind::Allow,
        &block("198.51.100.0/24", Some("sensor-b")),
        EntrySource::Manual,
    )
    .await
    .unwrap();
    // Another writer on the same Redis that does not check (an older version, a script).
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path(), "sensor-x");
    opts.redis_url = Some(redis.url());
    let raw = netguard_store::open(&opts).await.unwrap();
    let entry =
        |c: &str| netguard_store::ListEntry::new(c.parse().unwrap(), netguard_store::Scope::Global);
    raw.put_entries(
        ListKind::Block,
        &[entry("198.51.100.7/32"), entry("0.0.0.0/0")],
    )
    .await
    .unwrap();
    raw.put_entries(ListKind::Block, &[entry("203.0.113.5/32")])
        .await
        .unwrap();
    eventually("a valid remote block", Duration::from_secs(5), || {
        verdict(&dp_b, Ipv4Addr::new(203, 0, 113, 5)) == XDP_DROP
    })
    .await;
    assert_eq!(
        verdict(&dp_b, Ipv4Addr::new(198, 51, 100, 7)),
        XDP_PASS,
        "an allowlisted address was blocked by a remote change"
    );
    assert_eq!(
        verdict(&dp_b, Ipv4Addr::new(192, 0, 2, 200)),
        XDP_PASS,
        "0.0.0.0/0 from the feed was enforced"
    );
    assert_eq!(
        b.counters()[1].get(),
        2,
        "netguard_fleet_changes_refused_total"
    );
}

/// A reconcile into a table too small for the store's lists: what fits is enforced, and every
/// kernel entry is one the control plane tracks (so it expires and can be removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_reconcile_leaves_only_tracked_entries() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = netguard_store::open(&StoreOptions::new(dir.path(), "sensor-a"))
        .await
        .unwrap();
    let mut cfg = netguard_tests::fixtures::small_config();
    cfg.blocklist_v4_max = 16;
    let dp = netguard_tests::fixtures::load(&cfg);
    let dp = Arc::new(Mutex::new(dp));
    // Left over in the kernel (pinned maps of a previous run), not in the store.
    dp.lock()
        .unwrap()
        .blocklist
        .insert_many(&["10.9.9.0/24".parse().unwrap()])
        .unwrap();
    let entries: Vec<netguard_store::ListEntry> = (0..24u8)
        .map(|i| {
            let mut e = netguard_store::ListEntry::new(
                format!("10.1.{i}.0/24").parse().unwrap(),
                netguard_store::Scope::Global,
            );
            e.expires_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
            e
        })
        .collect();
    store.put_entries(ListKind::Block, &entries).await.unwrap();
    let control = Control::start(
        ControlConfig {
            sensor_id: "sensor-a".into(),
            ..ControlConfig::default()
        },
        dp.clone(),
        store,
    )
    .await
    .expect("a start with more entries than fit still starts");
    let kernel: std::collections::BTreeSet<String> = dp
        .lock()
        .unwrap()
        .blocklist
        .nets()
        .map(|n| n.to_string())
        .collect();
    let (_, views) = control.list(ListKind::Block, 0, 1000).await.unwrap();
    let tracked: std::collections::BTreeSet<String> = views
        .iter()
        .filter(|v| v.enforced)
        .map(|v| v.entry.cidr.to_string())
        .collect();
    assert_eq!(kernel.len(), 16, "{kernel:?}");
    assert!(
        !kernel.contains("10.9.9.0/24"),
        "the stale entry stayed in the kernel"
    );
    assert_eq!(
        kernel, tracked,
        "kernel entries the control plane does not track"
    );
    // A reconcile after room was made fills it again, still tracked.
    control
        .remove(ListKind::Block, "10.1.0.0/24", None)
        .await
        .unwrap();
    control.reconcile().await.unwrap();
    let kernel: std::collections::BTreeSet<String> = dp
        .lock()
        .unwrap()
        .blocklist
        .nets()
        .map(|n| n.to_string())
        .collect();
    let (_, views) = control.list(ListKind::Block, 0, 1000).await.unwrap();
    let tracked: std::collections::BTreeSet<String> = views
        .iter()
        .filter(|v| v.enforced)
        .map(|v| v.entry.cidr.to_string())
        .collect();
    assert_eq!(kernel.len(), 16);
    assert_eq!(kernel, tracked);
}

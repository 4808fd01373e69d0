use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use netguard_store::{EmbeddedConfig, EmbeddedStore, Store};
use tokio::sync::mpsc;
use crate::hostevents::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.log");
    std::fs::write(&path, "").unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(EmbeddedConfig::new(dir.path().join("s"))).await.unwrap());
    let (tx, mut rx) = mpsc::channel(1024);
    let tail = spawn_authlog(&path, AuthLogOptions::default(), StoreOffsets::new(store.clone(), &path), tx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now(); store.kv_put("x", b"y").await.unwrap(); println!("kv_put {:?}", t.elapsed());
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    for gap in [50u64, 5, 0] {
        let mut lat = vec![];
        for i in 0..20 {
            let t0 = Instant::now();
            f.write_all(format!("Failed password for root from 10.0.0.1 port {i} ssh2\r\n").as_bytes()).unwrap();
            rx.recv().await.unwrap();
            lat.push(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        lat.sort();
        println!("gap {gap}ms: median {:?} p90 {:?} max {:?}", lat[10], lat[18], lat[19]);
    }
    tail.stop().await;
}

//! The async tailer end to end: inotify wake-ups, events on the channel, and the position kept in a
//! real embedded store across a restart.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netguard_store::{EmbeddedConfig, EmbeddedStore, Store};
use tokio::sync::mpsc;

use crate::hostevents::{
    AuthLogOptions, HostEvent, HostEventKind, MemoryOffsets, OffsetStore, StoreOffsets,
    spawn_authlog, spawn_authlog_counted,
};

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn failed(port: u16) -> String {
    format!("Failed password for root from 10.213.1.2 port {port} ssh2\r\n")
}

async fn recv(rx: &mut mpsc::Receiver<HostEvent>, n: usize) -> Vec<HostEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events within 5 s: {got:?}", got.len()))
            .expect("tailer ended");
        got.push(e);
    }
    got
}

/// Nothing more arrives for a while.
async fn quiet(rx: &mut mpsc::Receiver<HostEvent>) {
    let extra = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
    assert!(extra.is_err(), "unexpected extra event: {extra:?}");
}

#[tokio::test]
async fn inotify_wakes_the_tailer_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sshd.log");
    append(&path, "Server listening on 10.213.1.1 port 22.\r\n");
    // A poll so slow that only inotify can explain a prompt event.
    let opts = AuthLogOptions {
        poll_interval: Duration::from_secs(30),
        ..AuthLogOptions::default()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let tail = spawn_authlog(&path, opts, MemoryOffsets::default(), tx);
    // Let the first poll (which starts at the end) and the directory watch happen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    append(&path, &failed(40000));
    let got = recv(&mut rx, 1).await;
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(2), "took {waited:?}");
    assert_eq!(got[0].kind, HostEventKind::FailedPassword);
    assert_eq!(got[0].src_port, Some(40000));
    assert_eq!(got[0].src_ip.to_string(), "10.213.1.2");
    let stats = tail.counters().snapshot();
    assert_eq!((stats.lines, stats.events, stats.unparsed), (1, 1, 0));
    tail.stop().await;
}

#[tokio::test]
async fn a_file_created_later_is_picked_up_by_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    // Also the directory is missing at start: no watch can be set up until it exists.
    let path = dir.path().join("later/auth.log");
    let opts = AuthLogOptions {
        poll_interval: Duration::from_millis(50),
        ..AuthLogOptions::default()
    };
    let (tx, mut rx) = mpsc::channel(16);
    let tail = spawn_authlog(&path, opts, MemoryOffsets::default(), tx);
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::create_dir(path.parent().unwrap()).unwrap();
    append(
        &path,
        "Nov 21 12:00:01 h sshd[1]: Invalid user a from fd00:213:1::2 port 5\n",
    );
    let got = recv(&mut rx, 1).await;
    assert_eq!(got[0].kind, HostEventKind::InvalidUser);
    assert_eq!(got[0].src_ip.to_string(), "fd00:213:1::2");
    tail.stop().await;
}

#[tokio::test]
async fn position_survives_a_restart_in_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.log");
    let state = dir.path().join("state");
    append(&path, &failed(1));
    append(&path, &failed(2));

    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(&state))
            .await
            .unwrap(),
    );
    let offsets = StoreOffsets::new(Arc::clone(&store), &path);
    assert_eq!(offsets.key(), format!("authlog:{}", path.display()));
    let (tx, mut rx) = mpsc::channel(16);
    let tail = spawn_authlog(
        &path,
        AuthLogOptions::default().from_start(true),
        offsets.clone(),
        tx,
    );
    let ports: Vec<_> = recv(&mut rx, 2).await.iter().map(|e| e.src_port).collect();
    assert_eq!(ports, [Some(1), Some(2)]);
    append(&path, &failed(3));
    assert_eq!(recv(&mut rx, 1).await[0].src_port, Some(3));
    // The position is saved right after a batch is sent, before a stop is looked at.
    tail.stop().await;
    let saved = offsets.load().await.unwrap().expect("position saved");
    assert_eq!(
        saved.current.offset,
        std::fs::metadata(&path).unwrap().len()
    );
    drop((offsets, store));

    // Lines written while the daemon is down, then a restart on the reopened store, still with
    // --auth-log-from-start: only the new lines arrive.
    append(&path, &failed(4));
    let store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(EmbeddedConfig::new(&state))
            .await
            .unwrap(),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let tail = spawn_authlog(
        &path,
        AuthLogOptions::default().from_start(true),
        StoreOffsets::new(store, &path),
        tx,
    );
    assert_eq!(recv(&mut rx, 1).await[0].src_port, Some(4));
    quiet(&mut rx).await;
    tail.stop().await;
}

#[tokio::test]
async fn dropping_the_receiver_ends_the_tailer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.log");
    append(&path, &failed(1));
    let (tx, rx) = mpsc::channel(1);
    let tail = spawn_authlog(
        &path,
        AuthLogOptions::default().from_start(true),
        MemoryOffsets::default(),
        tx,
    );
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tail.is_finished() {
        assert!(Instant::now() < deadline, "tailer still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_position_moves_only_past_counted_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sshd.log");
    append(&path, &failed(1));
    let first_line = std::fs::metadata(&path).unwrap().len();
    let offsets = MemoryOffsets::default();
    let (tx, mut rx) = mpsc::channel(16);
    let (tail, counted) = spawn_authlog_counted(
        &path,
        AuthLogOptions::default().from_start(true),
        offsets.clone(),
        tx,
    );
    assert_eq!(recv(&mut rx, 1).await[0].src_port, Some(1));
    append(&path, &failed(2));
    append(&path, &failed(3));
    assert_eq!(recv(&mut rx, 2).await.len(), 2);
    // Received (queued for the tracker) but not counted: nothing is saved past the start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = |o: &MemoryOffsets| o.get().map(|p| p.current.offset);
    assert_eq!(at(&offsets), None, "nothing counted, nothing saved");
    counted.add(1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while at(&offsets) != Some(first_line) {
        assert!(
            Instant::now() < deadline,
            "position not moved after the count: {:?}",
            at(&offsets)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A crash now (the task ends without the rest being counted): the next start reads lines 2
    // and 3 again, and only those.
    drop(counted);
    drop(rx);
    tail.stop().await;
    assert_eq!(at(&offsets), Some(first_line));
    let (tx, mut rx) = mpsc::channel(16);
    let (tail, counted) =
        spawn_authlog_counted(&path, AuthLogOptions::default(), offsets.clone(), tx);
    let ports: Vec<_> = recv(&mut rx, 2).await.iter().map(|e| e.src_port).collect();
    assert_eq!(ports, [Some(2), Some(3)]);
    quiet(&mut rx).await;
    // A clean stop waits for the consumer to count what it was sent, then saves.
    let consumer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        counted.add(2);
        rx
    });
    tail.stop().await;
    assert_eq!(at(&offsets), Some(std::fs::metadata(&path).unwrap().len()));
    drop(consumer.await.unwrap());
}

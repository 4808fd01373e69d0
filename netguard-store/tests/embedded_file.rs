//! What only the embedded backend has: a file that one process owns, in a state dir it creates.

mod support;

use netguard_store::{EmbeddedConfig, EmbeddedStore, ListKind, Scope, Store, StoreError};
use support::entry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_file_is_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig::new(dir.path().join("nested/state"));
    let first = EmbeddedStore::open(config.clone()).await.unwrap();
    assert!(first.path().starts_with(dir.path()));
    let Err(err) = EmbeddedStore::open(config.clone()).await else {
        panic!("opened the same database twice");
    };
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("--state-dir"), "{err}");

    // Once the first handle is gone, the file opens again with its data.
    first
        .put_entries(ListKind::Block, &[entry("10.1.0.0/16", Scope::Global)])
        .await
        .unwrap();
    drop(first);
    let again = EmbeddedStore::open(config).await.unwrap();
    assert_eq!(again.list_entries(ListKind::Block).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_state_dir_that_cannot_be_created_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let Err(err) = EmbeddedStore::open(EmbeddedConfig::new(file.join("state"))).await else {
        panic!("created a state dir under a regular file");
    };
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_without_redis_picks_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let options = netguard_store::StoreOptions::new(dir.path(), "sensor-1");
    let store = netguard_store::open(&options).await.unwrap();
    assert_eq!(store.backend_name(), "embedded");
    assert!(store.subscribe_changes().await.unwrap().is_none());
    assert!(dir.path().join(netguard_store::embedded::DB_FILE).is_file());
}

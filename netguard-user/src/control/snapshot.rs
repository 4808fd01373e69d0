//! The local snapshot of the last known lists, for a sensor on a shared Redis: when Redis is down at
//! start, the daemon enforces from this file instead of starting with empty maps (or not at all),
//! and reconciles with Redis once it answers.
//!
//! Written whole (temporary file, fsync, rename) and 0600 (it names every blocked and allowlisted
//! network), at most once per [`DEBOUNCE`] after a change, so a 100k bulk put or a burst of
//! automatic blocks costs one write.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use netguard_store::{ListEntry, ListKind};
use serde::{Deserialize, Serialize};

use super::Control;

/// The snapshot's file name in the state dir.
pub const SNAPSHOT_FILE: &str = "lists-snapshot.json";

/// Changes within this time after the first one share one write.
const DEBOUNCE: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub written_at: DateTime<Utc>,
    pub block: Vec<ListEntry>,
    pub allow: Vec<ListEntry>,
}

impl Snapshot {
    pub fn entries(self) -> [(ListKind, Vec<ListEntry>); 2] {
        [(ListKind::Block, self.block), (ListKind::Allow, self.allow)]
    }
}

pub fn write(path: &Path, snapshot: &Snapshot) -> std::io::Result<()> {
    let json = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    crate::statedir::write_private(path, &json)
}

/// The snapshot at `path`, `None` when there is none.
pub fn read(path: &Path) -> std::io::Result<Option<Snapshot>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Rewrites the snapshot after every change to the mirror (debounced).
pub async fn run(control: Control, path: PathBuf) {
    loop {
        control.inner.snapshot_wake.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
        let snapshot = {
            let mirror = control.inner.mirror.lock().await;
            Snapshot {
                written_at: Utc::now(),
                block: mirror.list(ListKind::Block).values().cloned().collect(),
                allow: mirror.list(ListKind::Allow).values().cloned().collect(),
            }
        };
        let p = path.clone();
        match tokio::task::spawn_blocking(move || write(&p, &snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!(
                "could not write the list snapshot {}: {e}; a start while Redis is down would use an older one",
                path.display()
            ),
            Err(e) => log::error!("list snapshot task failed: {e}"),
        }
    }
}

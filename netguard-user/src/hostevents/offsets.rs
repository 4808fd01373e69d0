//! Where the tailer has read up to, kept across restarts so that nothing is read twice.
//!
//! The tailer depends only on the [`OffsetStore`] trait; [`StoreOffsets`] keeps the position in the
//! daemon's [`Store`] (`kv_put("authlog:<path>")`), [`MemoryOffsets`] in memory for tests and for
//! runs without persistence.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};

use netguard_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// How far one file has been consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePos {
    /// Device and inode identify the file across renames (rotation keeps them, copies do not).
    pub dev: u64,
    pub ino: u64,
    /// Bytes consumed: always just after a '\n', so a restart never starts mid-line.
    pub offset: u64,
    /// FNV-1a of the (up to) [`TAIL_LEN`] bytes before `offset`. A file truncated and rewritten past
    /// `offset` (copytruncate while we were not looking) keeps its inode and size but not these
    /// bytes, so this tells "same file, grown" from "same inode, new content".
    pub tail_hash: u64,
}

/// How many bytes before the offset [`FilePos::tail_hash`] covers.
pub const TAIL_LEN: usize = 64;

/// The tailer's whole position: the file at the path, and the previous one if it is still being
/// drained after a rename rotation (sshd and syslog daemons keep writing to the old file for a
/// while).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub current: FilePos,
    #[serde(default)]
    pub rotated: Option<FilePos>,
}

/// Errors of an [`OffsetStore`]. The tailer logs them and goes on: losing a saved position costs
/// at worst a re-read after the next restart, never the live stream.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("offset store: {0}")]
    Store(#[from] StoreError),
    #[error("saved auth-log position under {key} is not valid JSON: {source}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Persistence for the tailer's [`Position`]. `save` is awaited after each batch of lines has been
/// handed on, so it should be durable when it returns.
pub trait OffsetStore: Send + Sync + 'static {
    fn load(&self) -> impl Future<Output = Result<Option<Position>, OffsetError>> + Send;
    fn save(&self, position: &Position) -> impl Future<Output = Result<(), OffsetError>> + Send;
}

/// Keeps the position in the daemon's store under `authlog:<path>` (per sensor on Redis).
#[derive(Clone)]
pub struct StoreOffsets {
    store: Arc<dyn Store>,
    key: String,
}

impl StoreOffsets {
    /// The key is the path as given; the same file under another path (a symlink) starts afresh.
    pub fn new(store: Arc<dyn Store>, path: &Path) -> Self {
        StoreOffsets {
            store,
            key: format!("authlog:{}", path.display()),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl OffsetStore for StoreOffsets {
    async fn load(&self) -> Result<Option<Position>, OffsetError> {
        let Some(bytes) = self.store.kv_get(&self.key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| OffsetError::Decode {
                key: self.key.clone(),
                source,
            })
    }

    async fn save(&self, position: &Position) -> Result<(), OffsetError> {
        // Serialising plain integers cannot fail.
        let bytes = serde_json::to_vec(position).expect("Position serialises");
        Ok(self.store.kv_put(&self.key, &bytes).await?)
    }
}

/// An in-memory position, shared by clones: tests, and runs that need no restart safety.
#[derive(Clone, Default)]
pub struct MemoryOffsets(Arc<Mutex<Option<Position>>>);

impl MemoryOffsets {
    pub fn get(&self) -> Option<Position> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl OffsetStore for MemoryOffsets {
    async fn load(&self) -> Result<Option<Position>, OffsetError> {
        Ok(self.get())
    }

    async fn save(&self, position: &Position) -> Result<(), OffsetError> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(*position);
        Ok(())
    }
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms (std's hasher is not), so a position
/// saved by one build verifies under the next.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

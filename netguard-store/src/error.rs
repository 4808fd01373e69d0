//! The store's one error type. Every message ends with what the operator can do about it, because
//! these strings reach `netguard status`, the REST API and the daemon's log unchanged.

use std::path::PathBuf;

/// Any error a cause can be boxed into; kept `Send + Sync` so errors cross task boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now. Callers keep enforcing from the kernel maps, and
    /// `ResilientStore` queues writes that fail this way.
    #[error("{backend} at {location} is unreachable ({source}): {hint}")]
    Unavailable {
        backend: &'static str,
        location: String,
        hint: &'static str,
        #[source]
        source: BoxError,
    },

    /// The backend is down and `ResilientStore`'s queue has no room: this write is lost.
    #[error(
        "{backend} at {location} is unreachable and the write queue is full ({capacity} writes \
         waiting): this write was NOT saved; bring {backend} back or raise the queue capacity"
    )]
    QueueFull {
        backend: &'static str,
        location: String,
        capacity: usize,
    },

    /// Stored data that cannot be read back (hand-edited keys, another program using the prefix,
    /// a damaged file).
    #[error(
        "stored {what} is corrupt: {detail}; remove the damaged record (or the key prefix / state \
         file) or restore it from a backup"
    )]
    Corrupt { what: String, detail: String },

    /// A value could not be encoded or decoded as JSON.
    #[error("could not encode or decode {what} as JSON: {source}")]
    Serde {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// Filesystem trouble around the embedded store's state dir.
    #[error("could not {action} {}: {source}; check that --state-dir exists and is writable", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Another process holds the embedded database open.
    #[error(
        "the embedded store {} is already open by another process: stop the other netguard or \
         use a different --state-dir",
        path.display()
    )]
    Locked { path: PathBuf },

    /// Any other failure of the embedded database.
    #[error("the embedded store {} failed: {source}; check disk space and permissions", path.display())]
    Embedded {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },

    /// The backend is reachable but refused the command (wrong key type, ACL, script error).
    #[error(
        "{backend} at {location} rejected a command ({source}): check that no other program \
         uses the key prefix and that the user may run it"
    )]
    Rejected {
        backend: &'static str,
        location: String,
        #[source]
        source: BoxError,
    },

    /// Input that the store refuses before writing anything (bulk writes stay all or nothing).
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: String },

    /// A blocking store task panicked or was cancelled; a bug, not an operator problem.
    #[error("internal store task failed ({0}): this is a bug, please report it with the log")]
    Task(String),
}

impl StoreError {
    /// Whether the failure is "backend unreachable", the only kind `ResilientStore` queues.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

impl StoreError {
    /// Whether a write that failed this way may succeed later unchanged: the backend was
    /// unreachable, or reachable but refusing writes for now (out of memory, stopped writes after
    /// a failed save, a permission or password change). `ResilientStore` queues and retries these.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Rejected { .. }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

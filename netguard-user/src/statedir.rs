//! The state directory (`--state-dir`): who may read it, and the store writes kept there when a
//! shutdown could not deliver them.
//!
//! It holds the admin token, the embedded store (every block, alert and login event) and the
//! unwritten-writes file, so it is root's alone: the directory 0700, its files 0600. An existing
//! directory or file that is more open (an older version, a `mkdir` by hand, a restored backup)
//! is tightened at start, with a warning that names it.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use netguard_store::resilient::{describe, replay};
use netguard_store::{QueuedWrite, Store};

/// The store writes that a shutdown could not deliver (Redis was down), replayed at the next
/// start and then removed.
pub const UNWRITTEN_FILE: &str = "store-unwritten.json";

/// The files of the state dir that must be 0600.
pub const PRIVATE_FILES: [&str; 6] = [
    netguard_store::embedded::DB_FILE,
    crate::api::auth::ADMIN_TOKEN_FILE,
    UNWRITTEN_FILE,
    crate::control::SNAPSHOT_FILE,
    crate::events::THRESHOLDS_FILE,
    crate::api::console::SESSIONS_FILE,
];

/// Writes `bytes` to `path` whole or not at all (a temporary file, synced, renamed over it), mode
/// 0600: a crash mid-write leaves the previous version, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot {action} {}: {source}; check that --state-dir is a directory root can write", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid (it holds store writes from the last shutdown): {source}; move it away to start without them", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StateDirError + 'a {
    move |source| StateDirError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Creates the state dir 0700, or tightens an existing one and its known files (warning about
/// each). Call before anything is written into it.
pub fn secure(dir: &Path) -> Result<(), StateDirError> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create", dir))?;
    }
    tighten(dir, 0o700, true)?;
    for name in PRIVATE_FILES {
        tighten(&dir.join(name), 0o600, true)?;
    }
    Ok(())
}

/// After start-up created its files (redb creates its database with the umask's mode): sets them
/// 0600 without a warning, since they are new.
pub fn secure_new_files(dir: &Path) -> Result<(), StateDirError> {
    for name in PRIVATE_FILES {
        tighten(&dir.join(name), 0o600, false)?;
    }
    Ok(())
}

/// Removes group and other bits from `path` if it exists; `warn` says so, naming it.
fn tighten(path: &Path, mode: u32, warn: bool) -> Result<(), StateDirError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    let now = meta.permissions().mode() & 0o777;
    if now & 0o077 == 0 {
        return Ok(());
    }
    if warn {
        log::warn!(
            "{} was open to other users (mode {now:o}); setting it to {mode:o}",
            path.display()
        );
    }
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

/// Keeps `writes` in the state dir (0600, written whole or not at all) for the next start.
/// Appends to writes already kept there (a start that could not replay them), oldest first.
pub fn keep_unwritten(dir: &Path, writes: Vec<QueuedWrite>) -> Result<PathBuf, StateDirError> {
    let path = dir.join(UNWRITTEN_FILE);
    let mut all = load_unwritten(dir)?.unwrap_or_default();
    all.extend(writes);
    let json = serde_json::to_vec(&all).expect("queued writes serialise");
    write_private(&path, &json).map_err(io_err("write", &path))?;
    Ok(path)
}

fn load_unwritten(dir: &Path) -> Result<Option<Vec<QueuedWrite>>, StateDirError> {
    let path = dir.join(UNWRITTEN_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateDirError::Decode { path, source })
}

/// At start: applies the writes the last shutdown kept, in order, then removes the file. A store
/// that fails meanwhile leaves the file in place for the next start (replaying twice is harmless:
/// every write is idempotent or at least once). Returns the writes' description, if there were any.
pub async fn replay_unwritten(
    dir: &Path,
    store: &dyn Store,
) -> Result<Option<String>, StateDirError> {
    let Some(writes) = load_unwritten(dir)? else {
        return Ok(None);
    };
    let path = dir.join(UNWRITTEN_FILE);
    let what = describe(&writes);
    if let Err(e) = replay(store, &writes).await {
        log::error!(
            "could not replay the store writes kept in {} ({what}): {e}; they stay there for the next start",
            path.display()
        );
        return Ok(None);
    }
    fs::remove_file(&path).map_err(io_err("remove", &path))?;
    Ok(Some(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn a_new_dir_is_0700_and_open_files_are_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/state");
        secure(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let old = tmp.path().join("old");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, Permissions::from_mode(0o755)).unwrap();
        let db = old.join(netguard_store::embedded::DB_FILE);
        fs::write(&db, b"").unwrap();
        fs::set_permissions(&db, Permissions::from_mode(0o644)).unwrap();
        let other = old.join("netguard.log");
        fs::write(&other, b"").unwrap();
        fs::set_permissions(&other, Permissions::from_mode(0o644)).unwrap();
        secure(&old).unwrap();
        assert_eq!((mode(&old), mode(&db)), (0o700, 0o600));
        assert_eq!(
            mode(&other),
            0o644,
            "only the state files are ours to change"
        );
    }

    #[test]
    fn kept_writes_are_0600_and_accumulate() {
        let tmp = tempfile::tempdir().unwrap();
        let kv = |k: &str| QueuedWrite::KvPut(k.into(), b"1".to_vec());
        let path = keep_unwritten(tmp.path(), vec![kv("a")]).unwrap();
        assert_eq!(mode(&path), 0o600);
        keep_unwritten(tmp.path(), vec![kv("b")]).unwrap();
        assert_eq!(
            load_unwritten(tmp.path()).unwrap(),
            Some(vec![kv("a"), kv("b")])
        );
    }
}

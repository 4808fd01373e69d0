//! Wake-ups for the tailer: inotify on the log's directory, so a new line is seen within
//! milliseconds (the block must land within 50 ms of the deciding line). The tailer also polls on a
//! timer, so a lost or overflowed event, a directory that appears later, or a host without inotify
//! only costs latency, never lines.
//!
//! The directory is watched rather than the file: a watch on the file would follow the renamed
//! file and never see the new one that logrotate creates at the path.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchMask};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub struct DirWatch {
    dir: PathBuf,
    /// The log's file name: events for it, and for its rotated siblings (`auth.log.1`, which the
    /// old file is named while it is drained), wake the tailer. Other files in /var/log do not.
    name: OsString,
    fd: Option<AsyncFd<Inotify>>,
    watching: bool,
    buf: Vec<u8>,
    warned: bool,
}

impl DirWatch {
    /// Never fails: without inotify the tailer still polls.
    pub fn new(path: &Path) -> Self {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().unwrap_or_default().to_os_string();
        let fd = match Inotify::init().and_then(register) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!(
                    "inotify unavailable ({e}); following {} by polling only",
                    path.display()
                );
                None
            }
        };
        let mut watch = DirWatch {
            dir,
            name,
            fd,
            watching: false,
            buf: vec![0; 4096],
            warned: false,
        };
        watch.ensure();
        watch
    }

    /// (Re)adds the directory watch if it is missing: the directory may not exist yet, or may have
    /// been removed and recreated.
    pub fn ensure(&mut self) {
        let Some(fd) = &self.fd else { return };
        if self.watching {
            return;
        }
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::CLOSE_WRITE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        match fd.get_ref().watches().add(&self.dir, mask) {
            Ok(_) => self.watching = true,
            Err(e) if !self.warned => {
                // Typically the directory is missing; the poll keeps trying.
                log::debug!("cannot watch {} yet: {e}", self.dir.display());
                self.warned = true;
            }
            Err(_) => {}
        }
    }

    /// Resolves when something may have happened to the log file. Cancel-safe: events read by a
    /// cancelled call are not needed, because the caller polls the file right after anyway.
    pub async fn changed(&mut self) {
        let (Some(fd), true) = (&mut self.fd, self.watching) else {
            return std::future::pending().await;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return std::future::pending().await;
            };
            let (buf, name) = (&mut self.buf, &self.name);
            let read = guard.try_io(|inner| {
                let mut wake = false;
                let mut lost = false;
                for event in inner.get_mut().read_events(buf)? {
                    lost |= event.mask.intersects(
                        EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF,
                    );
                    wake |= lost
                        || event.mask.contains(EventMask::Q_OVERFLOW)
                        || event.name.is_some_and(|n| {
                            n.as_encoded_bytes().starts_with(name.as_encoded_bytes())
                        });
                }
                Ok::<_, io::Error>((wake, lost))
            });
            match read {
                Ok(Ok((wake, lost))) => {
                    if lost {
                        self.watching = false;
                    }
                    if wake {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    log::warn!("reading inotify events: {e}; polling only");
                    self.fd = None;
                    return;
                }
                // Spurious readiness: wait again.
                Err(_would_block) => {}
            }
        }
    }
}

fn register(inotify: Inotify) -> io::Result<AsyncFd<Inotify>> {
    // SAFETY: `Inotify` owns its descriptor, closes it only when dropped, and returns the same one
    // from every `as_raw_fd` call; the `AsyncFd` owns the `Inotify` and is never given another.
    unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

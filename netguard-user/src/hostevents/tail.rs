//! Following a log file the way `tail -F` does, as plain synchronous code: the async driver
//! (`super::spawn_authlog`) calls [`Follower::poll`] whenever inotify or its timer says something may
//! have changed, so every rotation case is testable without a runtime or a clock.
//!
//! - Rename rotation (logrotate's default): a different inode appears at the path. The old file is
//!   read to its end, then kept open and drained until it has been quiet for
//!   [`FollowOptions::rotated_grace`], because writers keep appending to it until they reopen:
//!   rsyslog on HUP, after logrotate has already created the new file; `sshd -E` never for the
//!   connections already open (each new connection opens the path afresh).
//! - copytruncate: the file shrinks below what was read, or (if it regrew past that point before we
//!   looked) the bytes just before our offset changed. What was written after our last read and
//!   before the copy is then only in the copy, so the copy (a sibling holding the same bytes before
//!   our offset) is read on from there first; then the file restarts at 0.
//! - Partial lines: bytes after the last '\n' wait until their line is complete. Only whole lines
//!   count as consumed, so a restart re-reads an unfinished line whole, never its second half.
//! - Restarts: the [`Position`] saved after each batch says which inode was read how far; a file
//!   rotated while the daemon was down is found again by inode in the same directory.
//!
//! Reading itself (offsets, line splitting, the fingerprint) is in `super::reader`.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::AuthLogCounters;
use super::offsets::{FilePos, Position};
use super::reader::Open;

#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// With no saved position, read the file that exists at start from its beginning (replay)
    /// instead of only what is appended after start. A saved position always wins, so a restart
    /// with this flag still reads nothing twice.
    pub from_start: bool,
    /// How long a file that was renamed away is still drained after its last growth.
    pub rotated_grace: Duration,
    /// A line longer than this is dropped whole (up to its newline) and counted
    /// (`netguard_authlog_overlong_lines_total`), so a file without newlines cannot grow the
    /// buffer without bound and no piece of a line is ever read as a line of its own.
    pub max_line: usize,
    /// At most this many bytes per poll, so a large replay yields to the runtime between polls.
    pub read_budget: usize,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            from_start: false,
            rotated_grace: Duration::from_secs(60),
            max_line: 16 * 1024,
            read_budget: 1024 * 1024,
        }
    }
}

/// What one poll read.
#[derive(Debug, Default)]
pub struct Batch {
    /// Complete lines, without '\n' or a trailing '\r', in file order.
    pub lines: Vec<String>,
    /// The read budget ran out: poll again at once instead of waiting for a wake-up.
    pub more: bool,
}

/// Follows one path across rotations. See the module documentation.
pub struct Follower {
    path: PathBuf,
    opts: FollowOptions,
    counters: Arc<AuthLogCounters>,
    current: Option<Open>,
    /// The previous file after a rename rotation, drained until it has been quiet for a while.
    rotated: Option<Open>,
    /// The position saved by an earlier run; used when the path is first opened.
    saved: Option<Position>,
    /// The path did not exist at the first poll: whatever appears there later is all new.
    missing_at_start: bool,
    polled: bool,
    /// Set while the path is missing, so the wait is logged once, not every poll.
    waiting: bool,
}

impl Follower {
    pub fn new(
        path: PathBuf,
        saved: Option<Position>,
        opts: FollowOptions,
        counters: Arc<AuthLogCounters>,
    ) -> Self {
        Follower {
            path,
            opts,
            counters,
            current: None,
            rotated: None,
            saved,
            missing_at_start: false,
            polled: false,
            waiting: false,
        }
    }

    /// Where to resume after a restart; `None` until the path has been opened.
    pub fn position(&self) -> Option<Position> {
        let current = self.current.as_ref()?.pos();
        Some(Position {
            current,
            rotated: self.rotated.as_ref().map(Open::pos),
        })
    }

    /// Reads everything that changed since the last poll. I/O errors are logged and retried at the
    /// next poll: a log file that is briefly unreadable must not stop the sensor.
    pub fn poll(&mut self) -> Batch {
        let mut out = Vec::new();
        let mut budget = self.opts.read_budget;
        let (max_line, grace) = (self.opts.max_line, self.opts.rotated_grace);
        let counters = Arc::clone(&self.counters);

        if let Some(old) = &mut self.rotated {
            if let Err(e) = old.read(&mut out, &mut budget, &counters, max_line) {
                log::warn!("reading rotated {}: {e}", self.path.display());
            }
            if budget > 0 && old.last_growth.elapsed() >= grace {
                old.flush_partial(&mut out, &counters);
                self.rotated = None;
            }
        }

        match fs::metadata(&self.path).ok().filter(Metadata::is_file) {
            Some(meta) => {
                self.waiting = false;
                self.check_path(&meta, &mut out);
            }
            None if self.current.is_none() => {
                if !self.polled {
                    self.missing_at_start = true;
                }
                if !self.waiting {
                    log::info!(
                        "auth log {} does not exist yet; waiting for it",
                        self.path.display()
                    );
                    self.waiting = true;
                }
            }
            // Moved or deleted with nothing at the path yet: keep reading the open file, the
            // writer may still be appending to it.
            None => {}
        }
        self.polled = true;

        let truncated = match self.current.as_ref().map(Open::truncated) {
            Some(Ok(truncated)) => truncated,
            Some(Err(e)) => {
                log::warn!("checking {}: {e}", self.path.display());
                false
            }
            None => false,
        };
        if truncated {
            self.after_truncation(&mut out);
        }
        if let Some(cur) = &mut self.current
            && let Err(e) = cur.read(&mut out, &mut budget, &counters, max_line)
        {
            log::warn!("reading {}: {e}", self.path.display());
        }
        Batch {
            lines: out,
            more: budget == 0,
        }
    }

    /// copytruncate: the file was copied (to `auth.log.1`, say) and then cut to zero. Lines written
    /// after our last read and before the copy exist only in the copy, so they are read from there
    /// before the current file restarts at 0. (Lines written between the copy and the truncation
    /// are lost by copytruncate itself, for every reader.)
    fn after_truncation(&mut self, out: &mut Vec<String>) {
        let counters = Arc::clone(&self.counters);
        counters.truncations.fetch_add(1, Ordering::Relaxed);
        let Some(pos) = self.current.as_ref().map(Open::pos) else {
            return;
        };
        let copy = self.find_copy(&pos);
        let max_line = self.opts.max_line;
        let cur = self.current.as_mut().expect("checked above");
        match copy {
            Some((name, mut copy)) => {
                log::info!(
                    "auth log {} was truncated; finishing its copy {}, then reading it from its start",
                    self.path.display(),
                    name.display()
                );
                // The copy holds the unfinished line too, complete or as it was.
                cur.clear_partial();
                let _ = copy.read_all(out, &counters, max_line);
                copy.flush_partial(out, &counters);
            }
            None => {
                log::info!(
                    "auth log {} was truncated; reading it from its start",
                    self.path.display()
                );
                cur.flush_partial(out, &counters);
            }
        }
        cur.offset = 0;
        cur.tail.clear();
    }

    /// A sibling (`auth.log*`, another inode) holding the same bytes before `pos.offset`: the copy
    /// copytruncate made. The newest one if several match.
    fn find_copy(&self, pos: &FilePos) -> Option<(PathBuf, Open)> {
        // With nothing consumed there is nothing to recognise the copy by.
        if pos.offset == 0 {
            return None;
        }
        let name = self.path.file_name()?.as_encoded_bytes();
        let candidates = fs::read_dir(dir_of(&self.path))
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                let ours = meta.dev() == pos.dev && meta.ino() == pos.ino;
                let sibling = entry.file_name().as_encoded_bytes().starts_with(name);
                (sibling && !ours && meta.is_file() && meta.len() >= pos.offset)
                    .then(|| (meta.modified().ok(), entry.path()))
            });
        let mut candidates: Vec<_> = candidates.collect();
        candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
        candidates.into_iter().find_map(|(_, path)| {
            let open = Open::holding(&path, pos).ok().flatten()?;
            Some((path, open))
        })
    }

    /// Opens the path the first time, or switches to it when a new file took its place.
    fn check_path(&mut self, meta: &Metadata, out: &mut Vec<String>) {
        let counters = Arc::clone(&self.counters);
        let max_line = self.opts.max_line;
        let replaced = match &self.current {
            Some(cur) => cur.dev != meta.dev() || cur.ino != meta.ino(),
            None => {
                match self.first_open(meta, out) {
                    Ok(open) => self.current = Some(open),
                    Err(e) => log::warn!("opening {}: {e}", self.path.display()),
                }
                return;
            }
        };
        if !replaced {
            return;
        }
        let new = match Open::at(&self.path, 0) {
            Ok(new) => new,
            Err(e) => {
                log::warn!("opening rotated-in {}: {e}", self.path.display());
                return;
            }
        };
        log::info!(
            "auth log {} was rotated; following the new file",
            self.path.display()
        );
        counters.rotations.fetch_add(1, Ordering::Relaxed);
        // A second rotation while the first old file is still draining: finish that one now.
        if let Some(mut older) = self.rotated.take() {
            let _ = older.read_all(out, &counters, max_line);
            older.flush_partial(out, &counters);
        }
        let mut old = self.current.replace(new).expect("checked above");
        // Everything the old file holds comes before the new file's lines.
        if let Err(e) = old.read_all(out, &counters, max_line) {
            log::warn!("draining rotated {}: {e}", self.path.display());
        }
        old.last_growth = Instant::now();
        self.rotated = Some(old);
    }

    /// The first open of the path: resume a saved position, or start at the end (or the start).
    /// The saved position is dropped only once a file is open, so a failed open retries it.
    fn first_open(&mut self, meta: &Metadata, out: &mut Vec<String>) -> io::Result<Open> {
        let Some(saved) = self.saved else {
            return if self.opts.from_start || self.missing_at_start {
                Open::at(&self.path, 0)
            } else {
                Open::at_end(&self.path, self.opts.max_line)
            };
        };
        if saved.current.dev == meta.dev() && saved.current.ino == meta.ino() {
            let open = match Open::resume(&self.path, &saved.current)? {
                Some(open) => open,
                None => {
                    log::info!(
                        "auth log {} was truncated while not followed; reading it from its start",
                        self.path.display()
                    );
                    // Opened before the copy is read, so a failed open cannot read it twice.
                    let fresh = Open::at(&self.path, 0)?;
                    self.counters.truncations.fetch_add(1, Ordering::Relaxed);
                    if let Some((_, mut copy)) = self.find_copy(&saved.current) {
                        let _ = copy.read_all(out, &self.counters, self.opts.max_line);
                        copy.flush_partial(out, &self.counters);
                    }
                    fresh
                }
            };
            self.saved = None;
            self.rotated = saved.rotated.and_then(|r| self.reopen_elsewhere(&r));
            if let Some(old) = &mut self.rotated {
                // Its lines are older than whatever the current file has gained meanwhile.
                let _ = old.read_all(out, &self.counters, self.opts.max_line);
            }
            return Ok(open);
        }
        // Rotated while we were not running: finish the files we had, found by inode, then all
        // of the new one. The older of the two is drained to its end right now, in order.
        let open = Open::at(&self.path, 0)?;
        self.saved = None;
        self.counters.rotations.fetch_add(1, Ordering::Relaxed);
        if let Some(mut older) = saved.rotated.and_then(|r| self.reopen_elsewhere(&r)) {
            let _ = older.read_all(out, &self.counters, self.opts.max_line);
            older.flush_partial(out, &self.counters);
        }
        self.rotated = self.reopen_elsewhere(&saved.current);
        if let Some(old) = &mut self.rotated {
            let _ = old.read_all(out, &self.counters, self.opts.max_line);
        } else {
            log::warn!(
                "auth log {} was rotated while not followed and its old file is gone; lines written \
                 to it after the last run stopped are not read",
                self.path.display()
            );
        }
        Ok(open)
    }

    /// Finds a file by device and inode in the path's directory (where logrotate leaves it, e.g.
    /// `auth.log.1`) and reopens it at the saved offset.
    fn reopen_elsewhere(&self, pos: &FilePos) -> Option<Open> {
        let found = fs::read_dir(dir_of(&self.path))
            .ok()?
            .flatten()
            .find(|entry| {
                entry
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.dev() == pos.dev && m.ino() == pos.ino)
            })?;
        Open::resume(&found.path(), pos).ok().flatten()
    }
}

/// The directory a path's file lives in ("." for a bare file name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

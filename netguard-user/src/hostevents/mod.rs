//! Host events: login failures and successes that only logs can show. This module is the sensor
//! host's own source, sshd's log followed like `tail -F` ([`spawn_authlog`]); agents' events (POST
//! /api/v1/events) arrive through the API.
//!
//! ```text
//! auth.log ──inotify/poll──► tail::Follower (rotation, truncation, partial lines, saved position)
//!                              └─ lines ─► sshd::LineParser ─► HostEvent ─► mpsc::Sender
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

pub mod offsets;
mod reader;
pub mod sshd;
pub mod stamp;
pub mod tail;
mod watch;

#[cfg(test)]
mod tests;

pub use offsets::{FilePos, MemoryOffsets, OffsetError, OffsetStore, Position, StoreOffsets};
pub use sshd::LineParser;
pub use stamp::Zone;
pub use tail::{Batch, FollowOptions, Follower};

/// What a login line says happened.
///
/// One attempt can produce several lines, so a detector should count one kind per attempt:
/// `FailedPassword` is one per guessed password; with `UsePAM yes` each of those also logs a
/// `PamFailure`; `InvalidUser`, `ClosedPreauth` and `TooManyFailures` are one per connection (the
/// last one usually twice: "maximum authentication attempts exceeded" and "Disconnecting ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostEventKind {
    FailedPassword,
    InvalidUser,
    ClosedPreauth,
    PamFailure,
    TooManyFailures,
    /// A successful login: resets or annotates the source's failures.
    Accepted,
}

impl HostEventKind {
    pub fn is_failure(self) -> bool {
        self != HostEventKind::Accepted
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HostEventKind::FailedPassword => "failed_password",
            HostEventKind::InvalidUser => "invalid_user",
            HostEventKind::ClosedPreauth => "closed_preauth",
            HostEventKind::PamFailure => "pam_failure",
            HostEventKind::TooManyFailures => "too_many_failures",
            HostEventKind::Accepted => "accepted",
        }
    }
}

/// One login event from a log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEvent {
    /// From the line's timestamp; lines without one (`sshd -E`) are stamped when read.
    pub ts: DateTime<Utc>,
    pub kind: HostEventKind,
    pub src_ip: IpAddr,
    pub user: Option<String>,
    pub src_port: Option<u16>,
    /// "ssh" for this parser.
    pub service: String,
    /// The line as read (without its line ending), for alert evidence.
    pub raw: String,
}

/// Counters for `/metrics`; all only grow.
#[derive(Debug, Default)]
pub struct AuthLogCounters {
    /// Complete lines read.
    pub lines: AtomicU64,
    /// Events handed on (a folded "message repeated N times" counts N).
    pub events: AtomicU64,
    /// Lines that were not sshd login lines (other programs, other sshd messages).
    pub unparsed: AtomicU64,
    /// A new file took the path (rename rotation), also while the daemon was down.
    pub rotations: AtomicU64,
    /// The file was cut shorter than what had been read (copytruncate).
    pub truncations: AtomicU64,
}

/// A plain copy of [`AuthLogCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct AuthLogStats {
    pub lines: u64,
    pub events: u64,
    pub unparsed: u64,
    pub rotations: u64,
    pub truncations: u64,
}

impl AuthLogCounters {
    pub fn snapshot(&self) -> AuthLogStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AuthLogStats {
            lines: get(&self.lines),
            events: get(&self.events),
            unparsed: get(&self.unparsed),
            rotations: get(&self.rotations),
            truncations: get(&self.truncations),
        }
    }
}

/// How [`spawn_authlog`] follows and parses.
#[derive(Debug, Clone)]
pub struct AuthLogOptions {
    pub follow: FollowOptions,
    /// The fallback when inotify misses something (or is unavailable).
    pub poll_interval: Duration,
    /// The zone of syslog-format timestamps.
    pub zone: Zone,
}

impl Default for AuthLogOptions {
    fn default() -> Self {
        AuthLogOptions {
            follow: FollowOptions::default(),
            poll_interval: Duration::from_millis(250),
            zone: Zone::Local,
        }
    }
}

impl AuthLogOptions {
    /// `--auth-log-from-start`: with no saved position, replay the file from its beginning.
    pub fn from_start(mut self, yes: bool) -> Self {
        self.follow.from_start = yes;
        self
    }
}

/// The default `--auth-log`: Debian's auth.log, if this host has one.
pub fn default_auth_log() -> Option<PathBuf> {
    let path = Path::new("/var/log/auth.log");
    path.is_file().then(|| path.to_path_buf())
}

/// A running tailer. Dropping it stops the task too (its position is saved after every batch, so
/// nothing is lost by stopping at any moment).
pub struct AuthLog {
    counters: Arc<AuthLogCounters>,
    stop: Arc<Notify>,
    task: Option<JoinHandle<()>>,
}

impl AuthLog {
    pub fn counters(&self) -> Arc<AuthLogCounters> {
        Arc::clone(&self.counters)
    }

    /// Stops the tailer and waits until it has.
    pub async fn stop(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// True once the task has ended (stopped, or the event receiver was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for AuthLog {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// Follows `path`, sending every sshd login event on `tx`, until stopped or until the receiver is
/// dropped. Must be called inside a tokio runtime. The saved position comes from `offsets` (resume
/// where the last run stopped) and is saved there after each batch of lines has been sent.
pub fn spawn_authlog<O: OffsetStore>(
    path: impl Into<PathBuf>,
    options: AuthLogOptions,
    offsets: O,
    tx: mpsc::Sender<HostEvent>,
) -> AuthLog {
    let counters = Arc::new(AuthLogCounters::default());
    let stop = Arc::new(Notify::new());
    let task = tokio::spawn(run(
        path.into(),
        options,
        offsets,
        tx,
        Arc::clone(&counters),
        Arc::clone(&stop),
    ));
    AuthLog {
        counters,
        stop,
        task: Some(task),
    }
}

async fn run<O: OffsetStore>(
    path: PathBuf,
    mut options: AuthLogOptions,
    offsets: O,
    tx: mpsc::Sender<HostEvent>,
    counters: Arc<AuthLogCounters>,
    stop: Arc<Notify>,
) {
    let saved = match offsets.load().await {
        Ok(saved) => saved,
        Err(e) => {
            // Without the saved position a replay could read lines twice; starting at the end
            // can only miss lines written while the daemon was down.
            log::warn!("{e}; following {} from its end", path.display());
            options.follow.from_start = false;
            None
        }
    };
    let parser = LineParser::new(options.zone);
    let mut watch = watch::DirWatch::new(&path);
    let mut follower = Some(Follower::new(
        path.clone(),
        saved,
        options.follow.clone(),
        Arc::clone(&counters),
    ));
    let mut last_saved = saved;
    let mut tick = tokio::time::interval(options.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    log::info!("following auth log {}", path.display());
    loop {
        // File I/O off the async workers; the follower moves into the blocking task and back.
        let mut f = follower.take().expect("follower is put back every round");
        let polled = tokio::task::spawn_blocking(move || {
            let batch = f.poll();
            (f, batch)
        })
        .await;
        let Ok((f, batch)) = polled else {
            log::error!("auth-log tailer for {} panicked; stopped", path.display());
            return;
        };
        let position = f.position();
        follower = Some(f);
        let arrival = Utc::now();
        for line in &batch.lines {
            let Some((event, repeat)) = parser.parse(line, arrival) else {
                counters.unparsed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            counters
                .events
                .fetch_add(u64::from(repeat), Ordering::Relaxed);
            for _ in 0..repeat {
                if tx.send(event.clone()).await.is_err() {
                    log::info!("auth-log events have no receiver; stopping the tailer");
                    return;
                }
            }
        }
        // Saved only after the events were handed on: a crash in between re-reads one batch
        // rather than losing it.
        if let Some(pos) = position.filter(|p| Some(*p) != last_saved) {
            match offsets.save(&pos).await {
                Ok(()) => last_saved = Some(pos),
                Err(e) => log::warn!("saving the auth-log position: {e}"),
            }
        }
        if batch.more {
            tokio::task::yield_now().await;
            continue;
        }
        watch.ensure();
        tokio::select! {
            biased;
            () = stop.notified() => return,
            () = tx.closed() => {
                log::info!("auth-log events have no receiver; stopping the tailer");
                return;
            }
            () = watch.changed() => {}
            _ = tick.tick() => {}
        }
    }
}

//! Host events: login failures and successes that only logs can show. This module is the sensor
//! host's own source, sshd's log followed like `tail -F` ([`spawn_authlog`]); agents' events (POST
//! /api/v1/events) arrive through the API.
//!
//! ```text
//! auth.log ──inotify/poll──► tail::Follower (rotation, truncation, partial lines, saved position)
//!                              └─ lines ─► sshd::LineParser ─► HostEvent ─► mpsc::Sender
//! ```

use std::collections::VecDeque;
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
pub use sshd::{AuthLogFormat, LineParser, MAX_REPEAT, Parsed};
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
    /// Lines longer than `max_line`, dropped whole.
    pub overlong: AtomicU64,
    /// "message repeated N times" lines whose N was cut to [`sshd::MAX_REPEAT`].
    pub repeats_clamped: AtomicU64,
    /// Lines of the shape the format does not accept (bare lines in a syslog file, or the
    /// reverse), ignored.
    pub wrong_shape: AtomicU64,
}

/// A plain copy of [`AuthLogCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct AuthLogStats {
    pub lines: u64,
    pub events: u64,
    pub unparsed: u64,
    pub rotations: u64,
    pub truncations: u64,
    pub overlong: u64,
    pub repeats_clamped: u64,
    pub wrong_shape: u64,
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
            overlong: get(&self.overlong),
            repeats_clamped: get(&self.repeats_clamped),
            wrong_shape: get(&self.wrong_shape),
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
    /// Which lines are believed (`--auth-log-format`).
    pub format: AuthLogFormat,
}

impl Default for AuthLogOptions {
    fn default() -> Self {
        AuthLogOptions {
            follow: FollowOptions::default(),
            poll_interval: Duration::from_millis(250),
            zone: Zone::Local,
            format: AuthLogFormat::Auto,
        }
    }
}

impl AuthLogOptions {
    /// `--auth-log-from-start`: with no saved position, replay the file from its beginning.
    pub fn from_start(mut self, yes: bool) -> Self {
        self.follow.from_start = yes;
        self
    }

    pub fn format(mut self, format: AuthLogFormat) -> Self {
        self.format = format;
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
/// where the last run stopped) and is saved there after each batch of lines has been sent: for a
/// consumer that is done with an event once it has received it. A consumer that does more (counts
/// it, stores it) uses [`spawn_authlog_counted`].
pub fn spawn_authlog<O: OffsetStore>(
    path: impl Into<PathBuf>,
    options: AuthLogOptions,
    offsets: O,
    tx: mpsc::Sender<HostEvent>,
) -> AuthLog {
    spawn(path.into(), options, offsets, tx, None)
}

/// [`spawn_authlog`], but the position moves only past lines whose events the consumer has
/// reported done with [`Counted::add`]: a crash between reading a line and counting it re-reads
/// the line at the next start instead of losing it. On [`AuthLog::stop`] the tailer reads no
/// more, waits (up to [`STOP_WAIT`]) for the consumer to finish what was sent, and saves.
pub fn spawn_authlog_counted<O: OffsetStore>(
    path: impl Into<PathBuf>,
    options: AuthLogOptions,
    offsets: O,
    tx: mpsc::Sender<HostEvent>,
) -> (AuthLog, Counted) {
    let (ack, acks) = tokio::sync::watch::channel(0);
    let log = spawn(path.into(), options, offsets, tx, Some(acks));
    (log, Counted(Arc::new(ack)))
}

/// How long a stopping tailer waits for its consumer to count what was sent.
pub const STOP_WAIT: Duration = Duration::from_secs(5);

/// The consumer's side of [`spawn_authlog_counted`]: how many of the events received it is done
/// with (in the order received).
#[derive(Clone, Debug)]
pub struct Counted(Arc<tokio::sync::watch::Sender<u64>>);

impl Counted {
    pub fn add(&self, events: usize) {
        self.0.send_modify(|n| *n += events as u64);
    }
}

fn spawn<O: OffsetStore>(
    path: PathBuf,
    options: AuthLogOptions,
    offsets: O,
    tx: mpsc::Sender<HostEvent>,
    acks: Option<tokio::sync::watch::Receiver<u64>>,
) -> AuthLog {
    let counters = Arc::new(AuthLogCounters::default());
    let stop = Arc::new(Notify::new());
    let task = tokio::spawn(run(
        path,
        options,
        Saver {
            offsets,
            acks,
            sent: 0,
            pending: VecDeque::new(),
            last_saved: None,
        },
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

/// Saves the tailer's position once the events before it are done with.
struct Saver<O> {
    offsets: O,
    /// The consumer's count of events done with; `None`: done once sent.
    acks: Option<tokio::sync::watch::Receiver<u64>>,
    /// Events sent so far.
    sent: u64,
    /// Positions not yet saved, each with the number of events sent before it, oldest first.
    pending: VecDeque<(u64, Position)>,
    last_saved: Option<Position>,
}

impl<O: OffsetStore> Saver<O> {
    fn done(&self) -> u64 {
        match &self.acks {
            Some(acks) => *acks.borrow(),
            None => self.sent,
        }
    }

    /// Notes that everything read so far (and sent) ends at `pos`, then saves what is done.
    async fn read_up_to(&mut self, pos: Option<Position>) {
        if let Some(pos) = pos {
            let newest = self.pending.back().map(|p| p.1).or(self.last_saved);
            if newest != Some(pos) {
                self.pending.push_back((self.sent, pos));
            }
        }
        self.save_done().await;
    }

    /// Saves the newest position whose events are all done with.
    async fn save_done(&mut self) {
        let done = self.done();
        let mut newest = None;
        while let Some(&(needs, pos)) = self.pending.front() {
            if needs > done {
                break;
            }
            newest = Some(pos);
            self.pending.pop_front();
        }
        let Some(pos) = newest.filter(|p| Some(*p) != self.last_saved) else {
            return;
        };
        match self.offsets.save(&pos).await {
            Ok(()) => self.last_saved = Some(pos),
            Err(e) => log::warn!("saving the auth-log position: {e}"),
        }
    }

    /// Resolves when the consumer reports progress (never without a consumer count).
    async fn progress(&mut self) {
        let changed = match &mut self.acks {
            Some(acks) => acks.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
    }

    /// At stop: waits for the consumer to finish what was sent (bounded), then saves.
    async fn finish(&mut self, path: &Path) {
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while self.done() < self.sent {
            let Some(acks) = &mut self.acks else { break };
            match tokio::time::timeout_at(deadline, acks.changed()).await {
                Ok(Ok(())) => {}
                // The consumer is gone, or too slow: what it did not count is read again at the
                // next start.
                Ok(Err(_)) | Err(_) => {
                    log::warn!(
                        "stopping the auth-log tailer with {} event(s) of {} not counted; they are read again at the next start",
                        self.sent - self.done(),
                        path.display()
                    );
                    break;
                }
            }
        }
        self.save_done().await;
    }
}

async fn run<O: OffsetStore>(
    path: PathBuf,
    mut options: AuthLogOptions,
    mut saver: Saver<O>,
    tx: mpsc::Sender<HostEvent>,
    counters: Arc<AuthLogCounters>,
    stop: Arc<Notify>,
) {
    let saved = match saver.offsets.load().await {
        Ok(saved) => saved,
        Err(e) => {
            // Without the saved position a replay could read lines twice; starting at the end
            // can only miss lines written while the daemon was down.
            log::warn!("{e}; following {} from its end", path.display());
            options.follow.from_start = false;
            None
        }
    };
    saver.last_saved = saved;
    let mut parser = LineParser::new(options.zone).with_format(options.format);
    let mut watch = watch::DirWatch::new(&path);
    let mut follower = Some(Follower::new(
        path.clone(),
        saved,
        options.follow.clone(),
        Arc::clone(&counters),
    ));
    let mut tick = tokio::time::interval(options.poll_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    log::info!(
        "following auth log {} (format {})",
        path.display(),
        options.format.as_str()
    );
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
            if let Some(format) = parser.resolve(line, arrival) {
                log::info!(
                    "auth log {}: its first line says format {} (set --auth-log-format to fix it)",
                    path.display(),
                    format.as_str()
                );
            }
            let (event, repeat) = match parser.classify(line, arrival) {
                Parsed::Event {
                    event,
                    repeat,
                    clamped,
                } => {
                    if clamped {
                        counters.repeats_clamped.fetch_add(1, Ordering::Relaxed);
                    }
                    (event, repeat)
                }
                Parsed::WrongShape => {
                    counters.wrong_shape.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Parsed::Other => {
                    counters.unparsed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            counters
                .events
                .fetch_add(u64::from(repeat), Ordering::Relaxed);
            for _ in 0..repeat {
                if tx.send(event.clone()).await.is_err() {
                    log::info!("auth-log events have no receiver; stopping the tailer");
                    return;
                }
                saver.sent += 1;
            }
        }
        // Saved only once the events before it are done with (sent, or counted by a counting
        // consumer): a crash in between re-reads those lines rather than losing them.
        saver.read_up_to(position).await;
        if batch.more {
            tokio::task::yield_now().await;
            continue;
        }
        watch.ensure();
        loop {
            tokio::select! {
                biased;
                () = stop.notified() => {
                    saver.finish(&path).await;
                    return;
                }
                () = tx.closed() => {
                    log::info!("auth-log events have no receiver; stopping the tailer");
                    return;
                }
                () = saver.progress() => {
                    saver.save_done().await;
                    continue;
                }
                () = watch.changed() => {}
                _ = tick.tick() => {}
            }
            break;
        }
    }
}

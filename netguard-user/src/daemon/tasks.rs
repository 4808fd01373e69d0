//! The daemon's long-running tasks: the ring-buffer reader, the detection loop, the alert counter,
//! the metrics and summary tick, and the store flush at shutdown.

use std::{
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use netguard_common::{Counter, Counters, event_kind};

use crate::{
    control::{Control, PushEvent},
    datapath::{Datapath, EventStream, flow_dst, flow_src},
    hostevents::{HostEvent, HostEventKind},
    metrics::Metrics,
    sensor::SensorLoop,
    trust::Trust,
};

/// Delivers the writes queued during a store outage within `wait`; keeps the rest in the state
/// dir for the next start, and says exactly what they are.
pub(super) async fn flush_store(
    store: &dyn netguard_store::Store,
    state_dir: &std::path::Path,
    wait: Duration,
) {
    let queued = store.queued_writes();
    if queued == 0 {
        return;
    }
    log::info!(
        "delivering {queued} queued store write(s) (up to {})",
        humantime::format_duration(wait)
    );
    match tokio::time::timeout(wait, store.flush()).await {
        Ok(Ok(())) => {
            log::info!("store write queue delivered");
            return;
        }
        Ok(Err(e)) => log::warn!("store still unreachable: {e}"),
        Err(_) => log::warn!(
            "store write queue not delivered within {}",
            humantime::format_duration(wait)
        ),
    }
    let left = store.take_queued().await;
    if left.is_empty() {
        return;
    }
    let what = netguard_store::resilient::describe(&left);
    match crate::statedir::keep_unwritten(state_dir, left) {
        Ok(path) => log::warn!(
            "not written to the store: {what}; kept in {} and replayed at the next start",
            path.display()
        ),
        Err(e) => log::error!("LOST store writes: {what}: {e}"),
    }
}

/// The detection loop: one tick per second (the features' short window). Failed logins from the auth
/// log feed the failed-auth feature between ticks.
pub(super) async fn detect(
    mut sensor: SensorLoop,
    flows_now: Arc<AtomicU64>,
    mut auth: Option<tokio::sync::mpsc::Receiver<HostEvent>>,
    trust: Trust,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Between ticks, a look at the kernel's pass counter: a surge closes the window early.
    let mut probe = tokio::time::interval(Duration::from_millis(100));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = probe.tick() => {
                if !sensor.surging() {
                    continue;
                }
                // The next regular tick comes a full second after this one.
                tick.reset();
            }
            ev = async { match auth.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match ev {
                    // One FailedPassword per guessed password; PAM and invalid-user lines repeat it.
                    Some(ev) if ev.kind == HostEventKind::FailedPassword => sensor.on_failed_auth(ev.src_ip, 1),
                    // An accepted login protects its peer for as long as its connection lasts.
                    Some(ev) if ev.kind == HostEventKind::Accepted => {
                        if let Some(port) = ev.src_port {
                            trust.never_block.ssh_accepted(ev.src_ip, port, ev.user.as_deref().unwrap_or("?"));
                        }
                    }
                    Some(_) => {}
                    None => auth = None,
                }
                continue;
            }
        }
        match sensor.tick().await {
            Ok(r) => {
                flows_now.store(r.flows as u64, Ordering::Relaxed);
                if r.alerts > 0 {
                    log::info!(
                        "detection: {} alert(s), {} block(s) from {} source window(s)",
                        r.alerts,
                        r.blocks,
                        r.vectors
                    );
                }
            }
            Err(e) => log::error!("detection tick failed: {e}"),
        }
    }
}

/// Counts every alert (from any source) in `netguard_alerts_total{class}`.
pub(super) async fn count_alerts(control: Control, metrics: Arc<Metrics>) {
    let mut rx = control.subscribe();
    loop {
        match rx.recv().await {
            Ok(PushEvent::Alert(a)) => metrics.inc_alert(&a.class),
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                log::warn!("alert counter missed {n} events")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Ring-buffer reader: counts new flows, and turns blocklist hits into (rate-limited) alerts.
pub(super) async fn read_events(
    mut events: EventStream,
    control: Control,
    new_flows: Arc<AtomicU64>,
) {
    loop {
        let batch = match events.next_batch(1024).await {
            Ok(b) => b,
            Err(e) => {
                log::error!("ring buffer read failed: {e}");
                return;
            }
        };
        for ev in batch {
            match ev.kind {
                event_kind::NEW_FLOW => {
                    new_flows.fetch_add(1, Ordering::Relaxed);
                }
                event_kind::BLOCK_HIT => {
                    let (src, dst) = (flow_src(&ev.key), flow_dst(&ev.key));
                    control
                        .on_block_hit(src, dst, ev.key.dst_port, ev.key.proto)
                        .await;
                }
                _ => {}
            }
        }
    }
}

/// Where the one-line live summary goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryOut {
    /// Nowhere (tests).
    None,
    /// stdout: rewritten in place on a terminal, appended otherwise.
    Stdout,
    /// A log line (JSON logs: every line of output is an object).
    Log,
}

/// Updates the kernel and store metrics every `every`, and writes the one-line live summary to
/// `print`, until `shutdown` completes.
pub(super) async fn summarise(
    dp: &Arc<Mutex<Datapath>>,
    control: &Control,
    metrics: &Metrics,
    (every, print): (Duration, SummaryOut),
    new_flows: &AtomicU64,
    flows_now: &AtomicU64,
    shutdown: std::pin::Pin<&mut (dyn std::future::Future<Output = ()> + Send)>,
) -> Result<()> {
    let mut shutdown = shutdown;
    let mut tick = tokio::time::interval(every);
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Instant, Counters)> = None;
    // Whether the last tick saw a store backlog, to say once when it is delivered.
    let mut backlog = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                let (counters, blocked) = {
                    let mut dp = dp.lock().expect("datapath lock poisoned");
                    dp.flush_logs();
                    (dp.counters()?, dp.blocklist.len())
                };
                // The detection tick reads the flow table once a second; its size is reused here (a
                // million flows is too much to read again per summary or per scrape).
                let flows = flows_now.load(Ordering::Relaxed) as usize;
                metrics.set_flows_active(flows);
                metrics.set_kernel(&counters);
                let queued = control.store().queued_writes();
                metrics.set_store_queued_writes(queued);
                let by_class = control.store().queued_by_class();
                metrics.set_store_backlog(&by_class);
                if queued > 0 {
                    let what: Vec<String> = by_class.iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{n} {}", c.label())).collect();
                    log::warn!(
                        "store backlog: {queued} write(s) queued ({}) while the store is unreachable or refusing writes; the kernel enforces every block now and the store will catch up when it accepts writes",
                        what.join(", ")
                    );
                    backlog = true;
                } else if std::mem::take(&mut backlog) {
                    log::info!("store backlog delivered: the store has caught up with the kernel");
                }
                let now = Instant::now();
                let line = summary(&counters, prev.as_ref(), now, flows, blocked, new_flows.load(Ordering::Relaxed));
                prev = Some((now, counters));
                match print {
                    SummaryOut::None => continue,
                    SummaryOut::Log => { log::info!("{line}"); continue; }
                    SummaryOut::Stdout => {}
                }
                let mut out = std::io::stdout().lock();
                // On a terminal the summary rewrites one line; in a log it appends.
                if tty { write!(out, "\r\x1b[2K{line}")?; } else { writeln!(out, "{line}")?; }
                out.flush()?;
            }
        }
    }
    if tty && print == SummaryOut::Stdout {
        println!();
    }
    Ok(())
}

/// One line: rates since the previous sample, then totals.
pub fn summary(
    c: &Counters,
    prev: Option<&(Instant, Counters)>,
    now: Instant,
    flows: usize,
    blocked: usize,
    events: u64,
) -> String {
    let rate = |k: Counter| match prev {
        Some((t, p)) => {
            let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
            (c.get(k).saturating_sub(p.get(k))) as f64 / dt
        }
        None => 0.0,
    };
    let parse_errors: u64 = Counter::PARSE_ERRORS.iter().map(|k| c.get(*k)).sum();
    format!(
        "pass {:.0} pkt/s ({:.1} Mbit/s) | drop {:.0} pkt/s | totals: pass {} drop {} | flows {} | blocklist {} | new-flow events {} (over budget {}, ring full {}) | parse errors {}",
        rate(Counter::PassPackets),
        rate(Counter::PassBytes) * 8.0 / 1e6,
        rate(Counter::DropPackets),
        c.get(Counter::PassPackets),
        c.get(Counter::DropPackets),
        flows,
        blocked,
        events,
        c.get(Counter::EventsOverBudget),
        c.get(Counter::RingbufReserveFailed),
        parse_errors,
    )
}

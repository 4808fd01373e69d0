//! `netguard run`: attach, watch, summarise, and detach cleanly on SIGINT/SIGTERM.

use std::{
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netguard_common::{Counter, Counters};
use netguard_user::{
    config::Config,
    datapath::{Datapath, EventStream},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::RunArgs;

pub fn run(args: RunArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "netguard run must be started as root: loading and attaching XDP needs CAP_BPF and CAP_NET_ADMIN"
        );
    }
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let mut dp = Datapath::load(&config.datapath).context("could not load the XDP datapath")?;
    let mode = dp
        .attach(&args.iface, args.xdp_mode)
        .with_context(|| format!("could not attach to {}", args.iface))?;
    log::info!(
        "attached to {} in {} mode (flows max {}, blocklist v4 max {})",
        args.iface,
        mode.as_str(),
        config.datapath.flows_max,
        config.datapath.blocklist_v4_max
    );
    let dp = Arc::new(Mutex::new(dp));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?;
    let every = Duration::from_secs(args.summary_every.max(1));
    let result = rt.block_on(async {
        let events = dp
            .lock()
            .expect("datapath lock poisoned")
            .event_stream()
            .context("ring buffer already taken")?
            .context("could not register the ring buffer with tokio")?;
        daemon(dp.clone(), events, every).await
    });

    // Detach even when the loop failed, so the interface is never left with an orphaned program.
    let mut dp = dp.lock().expect("datapath lock poisoned");
    match dp.detach() {
        Ok(()) => log::info!("detached from {}", args.iface),
        Err(e) => log::warn!("detach: {e}"),
    }
    result
}

async fn daemon(dp: Arc<Mutex<Datapath>>, mut events: EventStream, every: Duration) -> Result<()> {
    let new_flow_events = Arc::new(AtomicU64::new(0));
    let seen = new_flow_events.clone();
    // Ring-buffer reader: today it counts NEW_FLOW events; detection consumes them in a later stage.
    let reader = tokio::spawn(async move {
        loop {
            match events.next_batch(1024).await {
                Ok(batch) => {
                    seen.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    log::error!("ring buffer read failed: {e}");
                    break;
                }
            }
        }
    });

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(every);
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Instant, Counters)> = None;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                let (counters, flows) = {
                    let mut dp = dp.lock().expect("datapath lock poisoned");
                    dp.flush_logs();
                    (dp.counters()?, dp.flows()?.len())
                };
                let now = Instant::now();
                let line = summary(&counters, prev.as_ref(), now, flows, new_flow_events.load(Ordering::Relaxed));
                prev = Some((now, counters));
                let mut out = std::io::stdout().lock();
                // On a terminal the summary rewrites one line; in a log it appends.
                if tty { write!(out, "\r\x1b[2K{line}")?; } else { writeln!(out, "{line}")?; }
                out.flush()?;
            }
        }
    }
    if tty {
        println!();
    }
    reader.abort();
    log::info!("signal received, shutting down");
    Ok(())
}

/// One line: rates since the previous sample, then totals.
pub fn summary(c: &Counters, prev: Option<&(Instant, Counters)>, now: Instant, flows: usize, events: u64) -> String {
    let rate = |k: Counter| match prev {
        Some((t, p)) => {
            let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
            (c.get(k).saturating_sub(p.get(k))) as f64 / dt
        }
        None => 0.0,
    };
    let parse_errors: u64 = Counter::PARSE_ERRORS.iter().map(|k| c.get(*k)).sum();
    format!(
        "pass {:.0} pkt/s ({:.1} Mbit/s) | drop {:.0} pkt/s | totals: pass {} drop {} | flows {} | new-flow events {} (over budget {}, ring full {}) | parse errors {}",
        rate(Counter::PassPackets),
        rate(Counter::PassBytes) * 8.0 / 1e6,
        rate(Counter::DropPackets),
        c.get(Counter::PassPackets),
        c.get(Counter::DropPackets),
        flows,
        events,
        c.get(Counter::EventsOverBudget),
        c.get(Counter::RingbufReserveFailed),
        parse_errors,
    )
}

//! `netguard run`: attach, restore state, serve, watch, summarise, and detach cleanly on SIGINT/SIGTERM.

use std::{
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netguard_common::{Counter, Counters, event_kind};
use netguard_user::{
    api,
    config::Config,
    control::{Control, ControlConfig, PushEvent},
    datapath::{Datapath, EventStream, flow_dst, flow_src},
    events::Events,
    hostevents::{self, HostEvent, HostEventKind},
    metrics::Metrics,
    sensor::{SensorLoop, load_model},
    trust::{self, Trust, refresh::RefreshContext},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::RunArgs;

/// The configuration after command-line overrides.
struct Settings {
    config: Config,
    sensor_id: String,
    record_features: Option<std::path::PathBuf>,
    auth_log: Option<std::path::PathBuf>,
    auth_log_from_start: bool,
    auth_log_format: hostevents::AuthLogFormat,
    /// The `--geoip-db` database, opened and checked before anything is attached.
    geoip: Option<Arc<netguard_user::geo::GeoDb>>,
    /// HTTPS for the API (`[api] tls_cert`, `tls_key`), checked before anything is attached.
    api_tls: Option<Arc<rustls::ServerConfig>>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s != "global")
        .unwrap_or_else(|| "local".into())
}

fn settings(args: &RunArgs) -> Result<Settings> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let redis_env = std::env::var(netguard_user::redis_url::REDIS_URL_ENV).ok();
    if let Some((url, origin)) = netguard_user::redis_url::resolve(
        args.redis.as_deref(),
        args.redis_url_file.as_deref(),
        redis_env,
        &config.store,
    )? {
        netguard_user::redis_url::announce(&url, &origin);
        config.store.redis = Some(url);
    }
    if let Some(ca) = &args.redis_ca {
        config.store.redis_ca = Some(ca.clone());
    }
    if let Some(d) = &args.state_dir {
        config.store.state_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.api.listen = l;
    }
    if let Some(g) = &args.geoip_db {
        config.api.geoip_db = Some(g.clone());
    }
    let geoip = match &config.api.geoip_db {
        Some(path) => {
            let db = netguard_user::geo::GeoDb::open(path)?;
            log::info!(
                "GeoIP: {} ({}) for /api/v1/geo-attacks",
                path.display(),
                db.database_type()
            );
            Some(Arc::new(db))
        }
        None => None,
    };
    let api_tls = config
        .api
        .tls()
        .context("cannot serve the API over HTTPS")?;
    if args.dry_run {
        config.detect.response.dry_run = true;
    }
    if let Some(m) = &args.model {
        config.detect.model = Some(m.clone());
    }
    config
        .detect
        .validate()
        .context("invalid [detect] configuration")?;
    let sensor_id = args
        .sensor_id
        .clone()
        .or_else(|| config.sensor_id.clone())
        .unwrap_or_else(hostname);
    netguard_store::types::validate_sensor_id(&sensor_id)
        .with_context(|| format!("invalid sensor id `{sensor_id}` (--sensor-id)"))?;
    Ok(Settings {
        config,
        sensor_id,
        record_features: args.record_features.clone(),
        auth_log: args
            .auth_log
            .clone()
            .or_else(netguard_user::hostevents::default_auth_log),
        auth_log_from_start: args.auth_log_from_start,
        auth_log_format: args.auth_log_format,
        geoip,
        api_tls,
    })
}

pub fn run(args: RunArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "netguard run must be started as root: loading and attaching XDP needs CAP_BPF and CAP_NET_ADMIN"
        );
    }
    let s = settings(&args)?;
    // The maps come from (or go to) the pins: a restart finds the lists, flows and counters the
    // kernel kept enforcing, and the program is swapped in only once the lists are reconciled.
    let dp = Datapath::open_pinned(&s.config.datapath, &args.bpffs, &args.iface)
        .with_context(|| format!("could not load the XDP datapath for {}", args.iface))?;
    let dp = Arc::new(Mutex::new(dp));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?;
    let every = Duration::from_secs(args.summary_every.max(1));
    let attach = (args.iface.clone(), args.xdp_mode);
    let result = rt.block_on(daemon(dp.clone(), s, every, attach));

    let mut dp = dp.lock().expect("datapath lock poisoned");
    if args.detach_on_exit {
        match dp.detach() {
            Ok(()) => log::info!("detached from {} and removed the pins", args.iface),
            Err(e) => log::warn!("detach: {e}"),
        }
    } else if dp.attached().is_some() {
        // The pinned link keeps the program, and the blocklist, enforcing while no daemon runs.
        log::info!(
            "exiting; XDP stays attached and enforcing on {} (pins in {}); `netguard detach --iface {}` removes it",
            args.iface,
            dp.pin_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            args.iface
        );
    }
    result
}

async fn daemon(
    dp: Arc<Mutex<Datapath>>,
    s: Settings,
    every: Duration,
    (iface, xdp_mode): (String, netguard_user::datapath::AttachMode),
) -> Result<()> {
    let mut store_opts = netguard_store::StoreOptions {
        redis_url: s.config.store.redis.clone(),
        redis_ca: s.config.store.redis_ca.clone(),
        redis_prefix: s.config.store.redis_prefix.clone(),
        state_dir: s.config.store.state_dir.clone(),
        sensor_id: s.sensor_id.clone(),
        alert_cap: s.config.store.alert_cap,
        start_unreachable: false,
    };
    // Root's alone (0700, files 0600), tightened before anything is written into it.
    let state_dir = s.config.store.state_dir.clone();
    netguard_user::statedir::secure(&state_dir)?;
    // On a shared Redis the lists are also kept in a local snapshot; with one, a Redis that is down
    // at start no longer stops the daemon: it enforces the snapshot and reconciles later.
    let snapshot = s
        .config
        .store
        .redis
        .is_some()
        .then(|| state_dir.join(netguard_user::control::SNAPSHOT_FILE));
    store_opts.start_unreachable = snapshot.as_ref().is_some_and(|p| p.exists());
    let store = netguard_store::open(&store_opts)
        .await
        .context("could not open the state store")?;
    log::info!("state store: {}", store.backend_name());
    // Writes the last shutdown could not deliver go first, so the restore below includes them.
    if let Some(what) =
        netguard_user::statedir::replay_unwritten(&state_dir, store.as_ref()).await?
    {
        log::info!("replayed the store writes kept at the last shutdown: {what}");
    }

    // What must never be blocked, read before anything can block: the first refresh runs now.
    let trust = Trust::new(&s.config.trust);
    let refresh = RefreshContext {
        trust: trust.clone(),
        cfg: s.config.trust.clone(),
        store: store.clone(),
        sensor_id: s.sensor_id.clone(),
        redis_url: s.config.store.redis.clone(),
    };
    let mut published = Vec::new();
    refresh.refresh(&mut published).await;
    log::info!(
        "never-block: {} address(es) this host depends on (GET /api/v1/never-block lists them)",
        trust.never_block.list().len()
    );
    tokio::spawn(trust::refresh::run(refresh, published));
    let control = Control::start_with_trust(
        ControlConfig {
            sensor_id: s.sensor_id.clone(),
            max_bulk: s.config.control.max_bulk,
            hit_alert_cooldown: s.config.control.hit_alert_cooldown,
            auto_caps: s.config.control.auto_caps.clone(),
            snapshot,
        },
        dp.clone(),
        store,
        trust.clone(),
    )
    .await
    .context("could not restore the blocklist and allowlist from the store")?;
    {
        let mut d = dp.lock().expect("datapath lock poisoned");
        log::info!(
            "reconciled {} blocklist and {} allowlist entries with the kernel",
            d.blocklist.len(),
            d.allowlist.len()
        );
        let mode = d
            .attach(&iface, xdp_mode)
            .with_context(|| format!("could not attach to {iface}"))?;
        log::info!(
            "attached to {iface} in {} mode as sensor `{}` (flows max {}, blocklist v4 max {})",
            mode.as_str(),
            s.sensor_id,
            s.config.datapath.flows_max,
            s.config.datapath.blocklist_v4_max
        );
    }

    let metrics = Arc::new(Metrics::new());
    metrics
        .registry()
        .register(Box::new(control.capped_counter()))
        .expect("netguard_response_capped_total registered once");
    for c in control.counters() {
        metrics
            .registry()
            .register(Box::new(c))
            .expect("control counters registered once");
    }
    tokio::spawn(count_alerts(control.clone(), metrics.clone()));

    let (tokens, origin) = api::Tokens::load(
        &s.config.api,
        std::env::var(api::auth::ADMIN_TOKEN_ENV).ok(),
        &s.config.store.state_dir,
    )
    .context("could not set up API tokens")?;
    match origin {
        api::AdminToken::File { path, created } => log::info!(
            "admin token {} {} (send it as `Authorization: Bearer ...`, or export NETGUARD_TOKEN for the CLI)",
            if created { "generated in" } else { "read from" },
            path.display()
        ),
        other => log::info!("admin token from {other:?}"),
    }
    netguard_user::statedir::secure_new_files(&state_dir)?;
    let mut state = api::ApiState::new(
        control.clone(),
        metrics.clone(),
        Arc::new(tokens),
        &s.config.api,
    );
    // One host-event engine for the API and the auth-log fast path, so both count into one tracker.
    let host_events = Events::new(
        control.clone(),
        metrics.clone(),
        s.config.events.clone(),
        s.config.detect.response.dry_run,
    );
    let replayed = host_events.restore_counts().await;
    if replayed > 0 {
        log::info!("failed-login counts restored from {replayed} stored host event(s)");
    }
    state = state.with_events(host_events.clone());
    if let Some(geo) = s.geoip.clone() {
        state = state.with_geoip(geo);
    }
    let listen = s.config.api.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}: pick another address with --listen")
        })?;
    if !listen.ip().is_loopback() {
        log::warn!(
            "the API listens on {listen}, which is not loopback: make sure only trusted networks reach it"
        );
    }
    let scheme = if s.api_tls.is_some() { "https" } else { "http" };
    log::info!(
        "REST, WebSocket and /metrics on {scheme}://{listen} (OpenAPI at /api/v1/openapi.json)"
    );
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve_with(
        listener,
        s.api_tls.clone(),
        state,
        async move {
            let _ = api_stopped.await;
        },
    ));

    let events = dp
        .lock()
        .expect("datapath lock poisoned")
        .event_stream()
        .context("ring buffer already taken")?
        .context("could not register the ring buffer with tokio")?;
    let new_flows = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_events(events, control.clone(), new_flows.clone()));

    let model = load_model(s.config.detect.model.as_deref())
        .context("could not load the detection model")?;
    match &model {
        Some(_) => log::info!(
            "detection: decision tree + threshold rules{}",
            if s.config.detect.response.dry_run {
                " (dry run: alerts only)"
            } else {
                ""
            }
        ),
        None => log::warn!(
            "detection: no model found, threshold rules only (make one with `cargo xtask lab` and `cargo xtask train`)"
        ),
    }
    let mut sensor = SensorLoop::new(
        &s.config.detect,
        &s.sensor_id,
        model,
        dp.clone(),
        control.clone(),
    );
    sensor.export_metrics(&metrics);
    sensor.set_trust(trust.clone());
    if let Some(path) = &s.record_features {
        sensor
            .record_to(path)
            .with_context(|| format!("cannot write feature records to {}", path.display()))?;
        log::info!("recording feature vectors to {}", path.display());
    }
    let auth_events = match &s.auth_log {
        Some(path) => {
            let (tx, rx) = tokio::sync::mpsc::channel(4096);
            let opts = hostevents::AuthLogOptions::default()
                .from_start(s.auth_log_from_start)
                .format(s.auth_log_format);
            let offsets = hostevents::StoreOffsets::new(control.store().clone(), path);
            // The handle stops the tailer when dropped: keep it for the daemon's lifetime. Its
            // position moves only past lines the consumer below has counted.
            let (handle, counted) = hostevents::spawn_authlog_counted(path, opts, offsets, tx);
            metrics.host_events().watch_authlog(handle.counters());
            // Fast path: each event is counted (and blocked on) as it arrives, then handed on to the
            // detector's failed-login features.
            let (to_detector, rx_detector) = tokio::sync::mpsc::channel(4096);
            let consumer = tokio::spawn(host_events.clone().follow_authlog_counted(
                rx,
                Some(to_detector),
                Some(counted),
            ));
            log::info!("following {} for failed logins", path.display());
            Some((handle, consumer, rx_detector))
        }
        None => None,
    };
    let (authlog, auth_rx) = match auth_events {
        Some((h, consumer, rx)) => (Some((h, consumer)), Some(rx)),
        None => (None, None),
    };
    let flows_now = Arc::new(AtomicU64::new(0));
    let detector = tokio::spawn(detect(sensor, flows_now.clone(), auth_rx, trust));

    let result = summarise(&dp, &control, &metrics, every, &new_flows, &flows_now).await;
    log::info!("shutting down");
    // Writers first (no new blocks from the API or the log), then the store's queue.
    let _ = stop_api.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => log::warn!("API server: {e}"),
        Err(_) => log::warn!("API server did not stop within 5 s"),
        _ => {}
    }
    detector.abort();
    reader.abort();
    if let Some((tail, consumer)) = authlog {
        // The tailer waits for the consumer to count what it was sent, then saves its position.
        tail.stop().await;
        if tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .is_err()
        {
            log::warn!("auth-log consumer did not finish within 5 s");
        }
    }
    flush_store(
        control.store().as_ref(),
        &state_dir,
        s.config.store.shutdown_flush,
    )
    .await;
    result
}

/// Delivers the writes queued during a store outage within `wait`; keeps the rest in the state
/// dir for the next start, and says exactly what they are.
async fn flush_store(
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
    match netguard_user::statedir::keep_unwritten(state_dir, left) {
        Ok(path) => log::warn!(
            "not written to the store: {what}; kept in {} and replayed at the next start",
            path.display()
        ),
        Err(e) => log::error!("LOST store writes: {what}: {e}"),
    }
}

/// The detection loop: one tick per second (the features' short window). Failed logins from the auth
/// log feed the failed-auth feature between ticks.
async fn detect(
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
async fn count_alerts(control: Control, metrics: Arc<Metrics>) {
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
async fn read_events(mut events: EventStream, control: Control, new_flows: Arc<AtomicU64>) {
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

/// Prints the one-line live summary until SIGINT or SIGTERM.
async fn summarise(
    dp: &Arc<Mutex<Datapath>>,
    control: &Control,
    metrics: &Metrics,
    every: Duration,
    new_flows: &AtomicU64,
    flows_now: &AtomicU64,
) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(every);
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Instant, Counters)> = None;
    // Whether the last tick saw a store backlog, to say once when it is delivered.
    let mut backlog = false;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
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

//! The daemon as a value: [`Daemon::build`] wires the store, the never-block set, the control plane,
//! metrics, the API, the host-event engine, the ring-buffer reader, detection and the auth-log
//! tailer around a loaded datapath; [`Daemon::run`] serves until its shutdown future completes, then
//! stops every task it owns and flushes the store. `netguard run` and the tests' API stack both go
//! through here, so tests run the real wiring.

mod tasks;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::task::JoinSet;

use crate::{
    api,
    config::Config,
    control::{Control, ControlConfig},
    datapath::{AttachMode, Datapath},
    events::Events,
    hostevents::{self, HostEvent},
    metrics::Metrics,
    sensor::{SensorLoop, load_model},
    trust::{self, Trust, refresh::RefreshContext},
};

pub use tasks::{SummaryOut, summary};

/// Everything `netguard run` decides from its flags and config file.
pub struct DaemonOptions {
    pub config: Config,
    pub sensor_id: String,
    /// Attach (or swap into the pinned link) here once the lists are reconciled; `None` leaves the
    /// datapath as the caller loaded it (tests that only use BPF_PROG_TEST_RUN).
    pub attach: Option<(String, AttachMode)>,
    pub record_features: Option<PathBuf>,
    pub auth_log: Option<PathBuf>,
    pub auth_log_from_start: bool,
    pub auth_log_format: hostevents::AuthLogFormat,
    pub geoip: Option<Arc<crate::geo::GeoDb>>,
    pub api_tls: Option<Arc<rustls::ServerConfig>>,
    /// `NETGUARD_ADMIN_TOKEN` as the process saw it.
    pub admin_token_env: Option<String>,
    /// An already bound listener (tests bind 127.0.0.1:0); default: bind `[api] listen`.
    pub listener: Option<tokio::net::TcpListener>,
    /// How often the kernel and store metrics are refreshed, and where the summary line goes.
    pub summary_every: Duration,
    pub summary_out: SummaryOut,
}

impl DaemonOptions {
    /// Defaults for `config`: no attach, no auth log, no summary line.
    pub fn new(config: Config, sensor_id: impl Into<String>) -> Self {
        Self {
            config,
            sensor_id: sensor_id.into(),
            attach: None,
            record_features: None,
            auth_log: None,
            auth_log_from_start: false,
            auth_log_format: hostevents::AuthLogFormat::Auto,
            geoip: None,
            api_tls: None,
            admin_token_env: None,
            listener: None,
            summary_every: Duration::from_secs(2),
            summary_out: SummaryOut::None,
        }
    }
}

/// A built daemon: its parts are reachable (tests inspect them) until [`Daemon::run`] consumes it.
pub struct Daemon {
    pub control: Control,
    pub metrics: Arc<Metrics>,
    pub state: api::ApiState,
    pub dp: Arc<Mutex<Datapath>>,
    pub local_addr: SocketAddr,
    tasks: JoinSet<()>,
    stop_api: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    authlog: Option<(hostevents::AuthLog, tokio::task::JoinHandle<()>)>,
    new_flows: Arc<AtomicU64>,
    flows_now: Arc<AtomicU64>,
    summary: (Duration, SummaryOut),
    state_dir: PathBuf,
    shutdown_flush: Duration,
}

impl Daemon {
    /// Opens the store, restores and reconciles the lists into `dp`'s maps, attaches when asked,
    /// and starts every task. Call inside a tokio runtime.
    pub async fn build(o: DaemonOptions, dp: Arc<Mutex<Datapath>>) -> Result<Daemon> {
        let s = &o.config;
        let mut tasks = JoinSet::new();
        let mut store_opts = netguard_store::StoreOptions {
            redis_url: s.store.redis.clone(),
            redis_ca: s.store.redis_ca.clone(),
            redis_prefix: s.store.redis_prefix.clone(),
            state_dir: s.store.state_dir.clone(),
            sensor_id: o.sensor_id.clone(),
            alert_cap: s.store.alert_cap,
            fingerprint_cap: s.store.fingerprint_cap,
            start_unreachable: false,
        };
        // Root's alone (0700, files 0600), tightened before anything is written into it.
        let state_dir = s.store.state_dir.clone();
        crate::statedir::secure(&state_dir)?;
        // On a shared Redis the lists are also kept in a local snapshot; with one, a Redis that is
        // down at start no longer stops the daemon: it enforces the snapshot and reconciles later.
        let snapshot = s
            .store
            .redis
            .is_some()
            .then(|| state_dir.join(crate::control::SNAPSHOT_FILE));
        store_opts.start_unreachable = snapshot.as_ref().is_some_and(|p| p.exists());
        let store = netguard_store::open(&store_opts)
            .await
            .context("could not open the state store")?;
        log::info!("state store: {}", store.backend_name());
        // Writes the last shutdown could not deliver go first, so the restore below includes them.
        if let Some(what) = crate::statedir::replay_unwritten(&state_dir, store.as_ref()).await? {
            log::info!("replayed the store writes kept at the last shutdown: {what}");
        }

        // What must never be blocked, read before anything can block: the first refresh runs now.
        let trust = Trust::new(&s.trust);
        let refresh = RefreshContext {
            trust: trust.clone(),
            cfg: s.trust.clone(),
            store: store.clone(),
            sensor_id: o.sensor_id.clone(),
            redis_url: s.store.redis.clone(),
        };
        let mut published = Vec::new();
        refresh.refresh(&mut published).await;
        log::info!(
            "never-block: {} address(es) this host depends on (GET /api/v1/never-block lists them)",
            trust.never_block.list().len()
        );
        tasks.spawn(trust::refresh::run(refresh, published));
        let (control, background) = Control::start_owned(
            ControlConfig {
                sensor_id: o.sensor_id.clone(),
                max_bulk: s.control.max_bulk,
                hit_alert_cooldown: s.control.hit_alert_cooldown,
                auto_caps: s.control.auto_caps.clone(),
                snapshot,
            },
            dp.clone(),
            store,
            trust.clone(),
        )
        .await
        .context("could not restore the blocklist and allowlist from the store")?;
        // The expiry timer, snapshot writer and fleet feed are the daemon's to cancel, like the rest.
        for task in background {
            tasks.spawn(task);
        }
        {
            let mut d = dp.lock().expect("datapath lock poisoned");
            log::info!(
                "reconciled {} blocklist and {} allowlist entries with the kernel",
                d.blocklist.len(),
                d.allowlist.len()
            );
            // Only now, with the lists in the maps, does the new program go live (on a restart:
            // swapped into the pinned link, which enforced the old one until this instant).
            if let Some((iface, mode)) = &o.attach {
                let used = d
                    .attach(iface, *mode)
                    .with_context(|| format!("could not attach to {iface}"))?;
                log::info!(
                    "attached to {iface} in {} mode as sensor `{}` (flows max {}, blocklist v4 max {})",
                    used.as_str(),
                    o.sensor_id,
                    s.datapath.flows_max,
                    s.datapath.blocklist_v4_max
                );
            }
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
        tasks.spawn(tasks::count_alerts(control.clone(), metrics.clone()));

        let (tokens, origin) =
            api::Tokens::load(&s.api, o.admin_token_env.clone(), &s.store.state_dir)
                .context("could not set up API tokens")?;
        match origin {
            api::AdminToken::File { path, created } => log::info!(
                "admin token {} {} (send it as `Authorization: Bearer ...`, or export NETGUARD_TOKEN for the CLI)",
                if created { "generated in" } else { "read from" },
                path.display()
            ),
            other => log::info!("admin token from {other:?}"),
        }
        crate::statedir::secure_new_files(&state_dir)?;
        // One host-event engine for the API and the auth-log fast path, so both count into one
        // tracker, configured from `[events]` in both.
        let host_events = Events::new(
            control.clone(),
            metrics.clone(),
            s.events.clone(),
            s.detect.response.dry_run,
        );
        match host_events.keep_thresholds_in(&state_dir) {
            Ok(Some(file)) => log::info!(
                "failed-login thresholds from {} (set by PUT /api/v1/thresholds), not [events] in the config; delete the file to use the config's",
                file.display()
            ),
            Ok(None) => {}
            Err(e) => anyhow::bail!("{e}"),
        }
        let replayed = host_events.restore_counts().await;
        if replayed > 0 {
            log::info!("failed-login counts restored from {replayed} stored host event(s)");
        }
        let mut state = api::ApiState::new(
            control.clone(),
            metrics.clone(),
            Arc::new(tokens),
            &s.api,
            host_events.clone(),
        );
        state = state.with_console_sessions(&state_dir);
        if let Some(geo) = o.geoip.clone() {
            state = state.with_geoip(geo);
        }
        let listener = match o.listener {
            Some(l) => l,
            None => {
                let listen = s.api.listen;
                tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| {
                        format!("cannot listen on {listen}: pick another address with --listen")
                    })?
            }
        };
        let local_addr = listener.local_addr()?;
        if !local_addr.ip().is_loopback() {
            log::warn!(
                "the API listens on {local_addr}, which is not loopback: make sure only trusted networks reach it"
            );
        }
        let scheme = if o.api_tls.is_some() { "https" } else { "http" };
        log::info!(
            "REST, WebSocket and /metrics on {scheme}://{local_addr} (OpenAPI at /api/v1/openapi.json)"
        );
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(api::serve_with(
            listener,
            o.api_tls.clone(),
            state.clone(),
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
        tasks.spawn(tasks::read_events(
            events,
            control.clone(),
            new_flows.clone(),
        ));

        let (model, origin) =
            load_model(s.detect.model.as_deref()).context("could not load the detection model")?;
        log::info!(
            "detection: decision tree from {origin} + threshold rules{}",
            if s.detect.response.dry_run {
                " (dry run: alerts only)"
            } else {
                ""
            }
        );
        let mut sensor = SensorLoop::new(
            &s.detect,
            &o.sensor_id,
            Some(model),
            dp.clone(),
            control.clone(),
        );
        sensor.export_metrics(&metrics);
        sensor.set_trust(trust.clone());
        if let Some(path) = &o.record_features {
            sensor
                .record_to(path)
                .with_context(|| format!("cannot write feature records to {}", path.display()))?;
            log::info!("recording feature vectors to {}", path.display());
        }
        let (authlog, auth_rx) = match &o.auth_log {
            Some(path) => {
                let (tx, rx) = tokio::sync::mpsc::channel(4096);
                let opts = hostevents::AuthLogOptions::default()
                    .from_start(o.auth_log_from_start)
                    .format(o.auth_log_format);
                let offsets = hostevents::StoreOffsets::new(control.store().clone(), path);
                // The handle stops the tailer when dropped: kept for the daemon's lifetime. Its
                // position moves only past lines the consumer below has counted.
                let (handle, counted) = hostevents::spawn_authlog_counted(path, opts, offsets, tx);
                metrics.host_events().watch_authlog(handle.counters());
                // Fast path: each event is counted (and blocked on) as it arrives, then handed on
                // to the detector's failed-login features.
                let (to_detector, rx_detector) = tokio::sync::mpsc::channel::<HostEvent>(4096);
                let consumer = tokio::spawn(host_events.clone().follow_authlog_counted(
                    rx,
                    Some(to_detector),
                    Some(counted),
                ));
                log::info!("following {} for failed logins", path.display());
                (Some((handle, consumer)), Some(rx_detector))
            }
            None => (None, None),
        };
        let flows_now = Arc::new(AtomicU64::new(0));
        tasks.spawn(tasks::detect(sensor, flows_now.clone(), auth_rx, trust));

        Ok(Daemon {
            control,
            metrics,
            state,
            dp,
            local_addr,
            tasks,
            stop_api,
            server,
            authlog,
            new_flows,
            flows_now,
            summary: (
                o.summary_every.max(Duration::from_millis(100)),
                o.summary_out,
            ),
            state_dir,
            shutdown_flush: s.store.shutdown_flush,
        })
    }

    /// Serves until `shutdown` completes; then stops the writers (API, auth log), cancels every
    /// other task, and delivers or keeps the store's queued writes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let result = tasks::summarise(
            &self.dp,
            &self.control,
            &self.metrics,
            self.summary,
            &self.new_flows,
            &self.flows_now,
            shutdown.as_mut(),
        )
        .await;
        log::info!("shutting down");
        // Writers first (no new blocks from the API or the log), then the store's queue.
        let _ = self.stop_api.send(());
        match tokio::time::timeout(Duration::from_secs(5), &mut self.server).await {
            Ok(Ok(Err(e))) => log::warn!("API server: {e}"),
            Err(_) => log::warn!("API server did not stop within 5 s"),
            _ => {}
        }
        if let Some((tail, consumer)) = self.authlog.take() {
            // The tailer waits for the consumer to count what it was sent, then saves its position.
            tail.stop().await;
            if tokio::time::timeout(Duration::from_secs(5), consumer)
                .await
                .is_err()
            {
                log::warn!("auth-log consumer did not finish within 5 s");
            }
        }
        self.tasks.shutdown().await;
        tasks::flush_store(
            self.control.store().as_ref(),
            &self.state_dir,
            self.shutdown_flush,
        )
        .await;
        result
    }
}

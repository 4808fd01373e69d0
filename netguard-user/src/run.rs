//! `netguard run`: the flags and config file become [`DaemonOptions`]; the datapath is opened on
//! its pinned state; [`Daemon::build`] and [`Daemon::run`] do the rest until SIGINT or SIGTERM. On
//! exit the program stays attached and enforcing, unless `--detach-on-exit`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use netguard_user::{
    config::Config,
    daemon::{Daemon, DaemonOptions, SummaryOut},
    datapath::Datapath,
    hostevents,
    logging::LogFormat,
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
    // Checked here, before anything is loaded or attached: a wrong --model stops the start cleanly.
    netguard_user::sensor::load_model(config.detect.model.as_deref())
        .context("could not load the detection model")?;
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
    let log_json = args.log_format.unwrap_or(s.config.log_format) == LogFormat::Json;
    // The maps come from (or go to) the pins: a restart finds the lists, flows and counters the
    // kernel kept enforcing, and the program is swapped in only once the lists are reconciled.
    let mut dp = Datapath::open_pinned(&s.config.datapath, &args.bpffs, &args.iface)
        .with_context(|| format!("could not load the XDP datapath for {}", args.iface))?;
    if args.xdp_netlink {
        dp.prefer_netlink();
    }
    let dp = Arc::new(Mutex::new(dp));
    let opts = DaemonOptions {
        config: s.config,
        sensor_id: s.sensor_id,
        attach: Some((args.iface.clone(), args.xdp_mode)),
        record_features: s.record_features,
        auth_log: s.auth_log,
        auth_log_from_start: s.auth_log_from_start,
        auth_log_format: s.auth_log_format,
        geoip: s.geoip,
        api_tls: s.api_tls,
        admin_token_env: std::env::var(netguard_user::api::auth::ADMIN_TOKEN_ENV).ok(),
        listener: None,
        summary_every: Duration::from_secs(args.summary_every.max(1)),
        summary_out: if log_json {
            SummaryOut::Log
        } else {
            SummaryOut::Stdout
        },
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the tokio runtime")?;
    let result = rt.block_on(async {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let daemon = Daemon::build(opts, dp.clone()).await?;
        daemon
            .run(async move {
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
            })
            .await
    });

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

//! A real daemon stack for API tests and the API benchmark: a loaded `Datapath` (not attached unless
//! the test attaches it), the embedded store in a directory, `Control`, and the REST/WebSocket server
//! on 127.0.0.1:0, with one token per role.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netguard_user::{
    api::{ApiConfig, ApiState, Role, TokenConfig},
    config::Config,
    control::{Control, ControlConfig},
    daemon::{Daemon, DaemonOptions},
    datapath::{Datapath, DatapathConfig},
};
use tokio::{sync::oneshot, task::JoinHandle};

pub const ADMIN: &str = "admin-token-for-tests-0123456789";
pub const OPERATOR: &str = "operator-token-for-tests-0123456789";
pub const VIEWER: &str = "viewer-token-for-tests-0123456789";
pub const AGENT: &str = "agent-token-for-tests-0123456789";
/// The VM the [`AGENT`] token is bound to (an agent token must name one).
pub const AGENT_VM: &str = "agent-vm";

pub struct StackOptions {
    pub datapath: DatapathConfig,
    pub control: ControlConfig,
    /// `api.geoip_db` loads that database into the API state, as `--geoip-db` does.
    pub api: ApiConfig,
    /// A Redis URL (e.g. [`crate::redis_server::RedisServer::url`]) instead of the embedded store.
    pub redis_url: Option<String>,
    /// `[trust]`: what is never blocked (the daemon's refresh keeps it, with what it derives).
    pub trust: netguard_user::trust::TrustConfig,
}

impl Default for StackOptions {
    fn default() -> Self {
        let tokens = [
            ("admin", Role::Admin, ADMIN),
            ("operator", Role::Operator, OPERATOR),
            ("viewer", Role::Viewer, VIEWER),
            ("agent", Role::Agent, AGENT),
        ]
        .into_iter()
        .map(|(name, role, token)| TokenConfig {
            name: name.into(),
            role,
            token: token.into(),
            vm_id: (role == Role::Agent).then(|| AGENT_VM.into()),
        })
        .collect();
        let api = ApiConfig {
            tokens,
            ..ApiConfig::default()
        };
        Self {
            datapath: crate::fixtures::small_config(),
            control: ControlConfig {
                sensor_id: "sensor-a".into(),
                ..ControlConfig::default()
            },
            api,
            redis_url: None,
            trust: Default::default(),
        }
    }
}

pub struct Stack {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub control: Control,
    pub dp: Arc<Mutex<Datapath>>,
    pub state: ApiState,
    pub state_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Stack {
    /// Loads a datapath and starts everything with its state in `state_dir`.
    pub async fn start(state_dir: &Path, opts: StackOptions) -> Stack {
        let dp = crate::fixtures::load(&opts.datapath);
        Self::start_with(dp, state_dir, opts).await
    }

    /// Starts on an existing datapath (e.g. one the test attached to an interface), through
    /// [`Daemon::build`] as `netguard run` does: the same wiring, with the test's config.
    pub async fn start_with(dp: Datapath, state_dir: &Path, opts: StackOptions) -> Stack {
        let mut config = Config {
            datapath: opts.datapath.clone(),
            api: opts.api.clone(),
            trust: opts.trust.clone(),
            ..Config::default()
        };
        config.control.max_bulk = opts.control.max_bulk;
        config.control.hit_alert_cooldown = opts.control.hit_alert_cooldown;
        config.control.auto_caps = opts.control.auto_caps.clone();
        config.store.state_dir = state_dir.to_owned();
        config.store.redis.clone_from(&opts.redis_url);
        let mut daemon_opts = DaemonOptions::new(config, opts.control.sensor_id.clone());
        daemon_opts.geoip = opts.api.geoip_db.as_ref().map(|path| {
            Arc::new(netguard_user::geo::GeoDb::open(path).unwrap_or_else(|e| panic!("{e}")))
        });
        daemon_opts.listener = Some(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback"),
        );
        let dp = Arc::new(Mutex::new(dp));
        let daemon = Daemon::build(daemon_opts, dp.clone())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "building the daemon ({}) in {}: {e:#}",
                    opts.redis_url.as_deref().unwrap_or("embedded store"),
                    state_dir.display()
                )
            });
        let base = format!("http://{}", daemon.local_addr);
        let (control, state) = (daemon.control.clone(), daemon.state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(daemon.run(async move {
            let _ = stopped.await;
        }));
        Stack {
            base,
            control,
            dp,
            state,
            state_dir: state_dir.to_owned(),
            stop: Some(stop),
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `ws://127.0.0.1:PORT/api/v1/ws`
    pub fn ws_url(&self) -> String {
        format!("{}/api/v1/ws", self.base.replacen("http://", "ws://", 1))
    }

    /// XDP verdict for `frame` (BPF_PROG_TEST_RUN).
    pub fn verdict(&self, frame: &[u8]) -> u32 {
        self.dp
            .lock()
            .expect("datapath lock")
            .test_run(frame)
            .expect("test_run")
    }

    /// Polls `f` until it is true or `limit` passes; returns whether it became true.
    pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        loop {
            if f() {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the daemon as SIGTERM does (graceful: WebSocket clients get "going away"; the store is
    /// flushed).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.server).await;
    }
}

/// An HTTP client that sends `token` as a bearer token.
pub fn http(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

//! Test support shared by the test binaries: a real redis-server per test, harnesses that open
//! each backend, and fixtures. A real server, not a mock, because the point is to test the Redis
//! commands, scripts and transactions we actually send.

// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

// Only conformance.rs runs the suite; the other test binaries would call its re-exports unused.
#[allow(unused_imports)]
pub mod suite;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use netguard_store::{
    Alert, EmbeddedConfig, EmbeddedStore, EntrySource, ListEntry, RedisConfig, RedisStore, Scope,
    Store,
};
use tempfile::TempDir;

/// The message the brief asks for: a missing redis-server fails the Redis tests, never skips them.
pub const MISSING_REDIS: &str = "redis-server not found: run `cargo xtask setup`";

/// Finds `redis-server` on a PATH-like list of directories.
pub fn find_redis_server(path_var: &str) -> Result<PathBuf, String> {
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| MISSING_REDIS.to_owned())
}

/// A redis-server child on 127.0.0.1, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    appendonly: bool,
    binary: PathBuf,
}

fn free_port() -> u16 {
    // Port 0 makes the kernel pick a free port; the listener is dropped right away so that
    // redis-server can bind it (a rare race with another test is handled by retrying).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Sends PING over a raw socket; true once the server answers PONG (not LOADING).
fn answers_pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl RedisServer {
    /// Starts a fresh server on a free port. `appendonly` keeps data across a kill and restart.
    pub fn start(appendonly: bool) -> Self {
        // Debian installs it in /usr/bin; sbin too in case PATH is minimal.
        let path = format!(
            "{}:/usr/bin:/usr/sbin",
            std::env::var("PATH").unwrap_or_default()
        );
        let binary = find_redis_server(&path).unwrap_or_else(|message| panic!("{message}"));
        let dir = tempfile::tempdir().expect("tempdir for redis");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            appendonly,
            binary,
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; log:\n{}", server.log());
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawns on `self.port` and waits (bounded) until it answers; false if it exited.
    fn spawn(&mut self) -> bool {
        let appendonly = if self.appendonly { "yes" } else { "no" };
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", appendonly])
            // Every write reaches the AOF before the reply, so a SIGKILL loses nothing that a
            // client saw acknowledged (that is what the resilience test relies on).
            .args(["--appendfsync", "always"])
            .args(["--logfile", &self.log_path().display().to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        for _ in 0..400 {
            if answers_pong(self.port) {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would; waits so the port is free for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not restart; log:\n{}", self.log());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Opens stores of one backend over the same persistent state, so a test can drop a store and
/// open a fresh one (a new process, in effect) to check durability.
#[async_trait]
pub trait Harness: Send + Sync {
    async fn open(&self, alert_cap: usize) -> Arc<dyn Store> {
        self.open_with(alert_cap, netguard_store::DEFAULT_FINGERPRINT_CAP)
            .await
    }

    /// [`Harness::open`] with a cap on the event fingerprints kept for deduplication.
    async fn open_with(&self, alert_cap: usize, fingerprint_cap: usize) -> Arc<dyn Store>;
}

pub struct EmbeddedHarness {
    dir: TempDir,
}

impl EmbeddedHarness {
    pub fn new() -> Self {
        EmbeddedHarness {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

#[async_trait]
impl Harness for EmbeddedHarness {
    async fn open_with(&self, alert_cap: usize, fingerprint_cap: usize) -> Arc<dyn Store> {
        let mut config = EmbeddedConfig::new(self.dir.path().join("state"));
        config.alert_cap = alert_cap;
        // One cap for both histories, so the suite can test the event cap the same way.
        config.event_cap = alert_cap;
        config.fingerprint_cap = fingerprint_cap;
        Arc::new(
            EmbeddedStore::open(config)
                .await
                .expect("open embedded store"),
        )
    }
}

pub struct RedisHarness {
    pub server: RedisServer,
    pub prefix: String,
}

static PREFIX_SEQ: AtomicU32 = AtomicU32::new(0);

impl RedisHarness {
    pub fn start() -> Self {
        let seq = PREFIX_SEQ.fetch_add(1, Ordering::Relaxed);
        RedisHarness {
            server: RedisServer::start(false),
            prefix: format!("ngtest{seq}"),
        }
    }

    pub fn config(&self, sensor_id: &str) -> RedisConfig {
        let mut config = RedisConfig::new(self.server.url(), sensor_id);
        config.prefix.clone_from(&self.prefix);
        config
    }
}

#[async_trait]
impl Harness for RedisHarness {
    async fn open_with(&self, alert_cap: usize, fingerprint_cap: usize) -> Arc<dyn Store> {
        let mut config = self.config("sensor-1");
        config.alert_cap = alert_cap;
        config.event_cap = alert_cap;
        config.fingerprint_cap = fingerprint_cap;
        Arc::new(RedisStore::connect(config).await.expect("connect redis"))
    }
}

/// Now, truncated to whole milliseconds so expiries compare exactly with the ms index.
pub fn now_ms() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(Utc::now().timestamp_millis())
        .single()
        .expect("valid now")
}

pub fn entry(cidr: &str, scope: Scope) -> ListEntry {
    ListEntry {
        cidr: cidr.parse().expect("test cidr"),
        scope,
        reason: Some(format!("test {cidr}")),
        source: EntrySource::Manual,
        created_at: now_ms(),
        expires_at: None,
    }
}

pub fn alert(n: u32, class: &str, src: &str) -> Alert {
    let mut evidence = serde_json::Map::new();
    evidence.insert("syn_rate".into(), serde_json::json!(n * 100));
    evidence.insert("ports".into(), serde_json::json!([22, 80]));
    Alert {
        id: format!("alert-{n}"),
        ts: now_ms() + chrono::Duration::milliseconds(i64::from(n)),
        sensor_id: "sensor-1".into(),
        class: class.into(),
        src_ip: src.parse().expect("test ip"),
        dst_ip: n.is_multiple_of(2).then(|| "10.9.9.9".parse().expect("ip")),
        dst_port: n.is_multiple_of(2).then_some(22),
        risk: 80,
        confidence: 0.875,
        mitre: "T1046".into(),
        action: "alerted".into(),
        evidence,
        count: n,
    }
}

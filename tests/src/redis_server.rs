//! A real `redis-server` on a loopback port the test picks, with an append-only file so that data
//! survives a kill and restart on the same port. Killed on drop.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a server, or panics with what to do when redis-server is not installed.
    pub fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `cargo xtask setup`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on port {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the server vanishes as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// redis-server inside a test's network namespace, on its loopback, speaking TLS only
/// (`--port 0 --tls-port P`) with the test CA's server certificate and, optionally, a password.
/// Killed on drop; `kill` and `start` again on the same port and data dir.
pub struct TlsRedis {
    pub ns: String,
    pub port: u16,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    password: Option<String>,
    child: Option<Child>,
}

impl TlsRedis {
    pub fn start(ns: &str, port: u16, pki: &crate::pki::Pki, password: Option<&str>) -> Self {
        let mut s = Self {
            ns: ns.to_owned(),
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            cert: pki.cert.clone(),
            key: pki.key.clone(),
            ca: pki.ca.clone(),
            password: password.map(str::to_owned),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", &port])
            .arg("--tls-cert-file")
            .arg(&self.cert)
            .arg("--tls-key-file")
            .arg(&self.key)
            .arg("--tls-ca-cert-file")
            .arg(&self.ca)
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "yes", "--dir"])
            .arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `cargo xtask setup`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.ns, "ss", "-Hltn", &format!("sport = :{port}")])
                .output()
                .expect("ss runs");
            if !out.stdout.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server (TLS) did not listen on port {port} in {} within 10 s", self.ns);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

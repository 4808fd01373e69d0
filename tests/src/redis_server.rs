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
    /// The network namespace it runs in (on that namespace's loopback), if not the host's.
    ns: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server, or panics with what to do when redis-server is not installed.
    pub fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            ns: None,
        };
        s.spawn();
        s
    }

    /// Starts a server on the loopback of network namespace `ns`, where a daemon started in that
    /// namespace can reach it (the host's loopback is another one).
    pub fn start_in(ns: &str) -> Self {
        let mut s = Self {
            port: 6379,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            ns: Some(ns.to_owned()),
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
        let mut cmd = match &self.ns {
            // `ip netns exec` execs redis-server in place, so killing the child kills the server.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        let child = cmd
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `cargo xtask setup`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        match &self.ns {
            Some(ns) => Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "redis-cli",
                    "-p",
                    &self.port.to_string(),
                    "ping",
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG")),
            None => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
        }
    }

    /// Runs `redis-cli ARGS` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "redis-cli"]);
                c
            }
            None => Command::new("redis-cli"),
        };
        let out = cmd
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port,
        ])
        .arg("--tls-cert-file")
        .arg(&self.cert)
        .arg("--tls-key-file")
        .arg(&self.key)
        .arg("--tls-ca-cert-file")
        .arg(&self.ca)
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
        ])
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
                .args([
                    "netns",
                    "exec",
                    &self.ns,
                    "ss",
                    "-Hltn",
                    &format!("sport = :{port}"),
                ])
                .output()
                .expect("ss runs");
            if !out.stdout.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not listen on port {port} in {} within 10 s",
                self.ns
            );
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

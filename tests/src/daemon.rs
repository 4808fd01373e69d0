//! The real `netguard run` process inside a test namespace pair: started with the flags a test
//! needs, ready once `/api/v1/health` says the program is attached, stopped with SIGTERM. Its log goes
//! to a file in the state directory (a pipe nobody reads would block a chatty daemon).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::netns::{NetnsPair, SENSOR_IF, bpffs_for, run_in};

/// The `netguard` binary of the profile the caller was built with: next to a bench binary
/// (`target/<profile>/`), or one level up from a test (`target/<profile>/deps/`).
/// `NETGUARD_BIN` overrides it (a benchmark comparing against another build).
pub fn netguard_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NETGUARD_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dirs = exe.ancestors().skip(1).take(2);
    let found = dirs.map(|d| d.join("netguard")).find(|b| b.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "no netguard binary next to {}: `cargo build [--release] -p netguard-user --bin netguard` (cargo xtask test and bench do)",
            exe.display()
        )
    })
}

pub struct Daemon {
    child: Option<Child>,
    ns: String,
    api: String,
    token: String,
    log: PathBuf,
    /// Set when the API serves HTTPS: the CA that curl trusts (`--cacert`).
    cacert: Option<PathBuf>,
}

/// How to launch beyond the flags: environment variables, HTTPS with a private CA, where the log
/// goes, and whether the daemon generates its own admin token.
#[derive(Default)]
pub struct Launch {
    pub env: Vec<(String, String)>,
    /// The API serves HTTPS (the flags or config must say so); curl trusts this CA.
    pub cacert: Option<PathBuf>,
    /// The log file; default `state/netguard.log`.
    pub log: Option<PathBuf>,
    /// No `NETGUARD_ADMIN_TOKEN`: the daemon generates `admin.token` in the state dir, and the
    /// harness reads it from there once the daemon is healthy.
    pub generate_token: bool,
    /// Another `netguard` binary than the build's (e.g. a copy installed elsewhere).
    pub bin: Option<PathBuf>,
    /// A directory the daemon must not see: an empty tmpfs is mounted over it in the daemon's own
    /// mount namespace (`ip netns exec` gives it one; nothing changes for anyone else).
    pub hide: Option<PathBuf>,
}

impl Daemon {
    /// `netguard run` in the sensor namespace on its veth (skb mode), the API on `api` (loopback inside
    /// that namespace), state in `state`, plus `extra` flags. Waits up to 20 s for it to be healthy.
    pub fn start(lab: &NetnsPair, state: &Path, api: &str, token: &str, extra: &[&str]) -> Daemon {
        Self::start_in(&lab.sensor, SENSOR_IF, state, api, token, extra)
    }

    /// [`Daemon::start`] in any namespace, on interface `iface` there.
    pub fn start_in(
        ns: &str,
        iface: &str,
        state: &Path,
        api: &str,
        token: &str,
        extra: &[&str],
    ) -> Daemon {
        Self::launch(ns, iface, state, api, token, extra, Launch::default())
    }

    /// [`Daemon::start`] with no `NETGUARD_ADMIN_TOKEN`, so the daemon generates `admin.token` in
    /// `state` (which need not exist yet: the log goes to `log`); the token is read from there.
    pub fn start_generating_token(
        lab: &NetnsPair,
        log: &Path,
        state: &Path,
        api: &str,
        extra: &[&str],
    ) -> Daemon {
        let how = Launch {
            log: Some(log.to_owned()),
            generate_token: true,
            ..Launch::default()
        };
        Self::launch(&lab.sensor, SENSOR_IF, state, api, "", extra, how)
    }

    /// [`Daemon::start_in`] with extra environment and, for HTTPS, the CA curl trusts.
    pub fn launch(
        ns: &str,
        iface: &str,
        state: &Path,
        api: &str,
        token: &str,
        extra: &[&str],
        how: Launch,
    ) -> Daemon {
        let log = how
            .log
            .clone()
            .unwrap_or_else(|| state.join("netguard.log"));
        let out = File::create(&log).expect("daemon log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if let Some(dir) = &how.hide {
            cmd.args([
                "sh",
                "-c",
                "mount -t tmpfs -o ro,size=4k netguard-hidden \"$1\" && shift && exec \"$@\"",
                "sh",
            ])
            .arg(dir);
        }
        cmd.arg(how.bin.clone().unwrap_or_else(netguard_bin))
            .args([
                "run",
                "--iface",
                iface,
                "--xdp-mode",
                "skb",
                "--listen",
                api,
            ])
            .args(["--summary-every", "60", "--state-dir"])
            .arg(state);
        // Pins go to the namespace's own bpffs unless the test picks one.
        if !extra.contains(&"--bpffs") {
            cmd.arg("--bpffs").arg(bpffs_for(ns));
        }
        cmd.args(extra)
            .env_remove("NETGUARD_ADMIN_TOKEN")
            .env("RUST_BACKTRACE", "0")
            .envs(how.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(out.try_clone().expect("dup log fd"))
            .stderr(out);
        if !how.generate_token {
            cmd.env("NETGUARD_ADMIN_TOKEN", token);
        }
        let child = cmd.spawn().expect("netguard starts");
        let mut d = Daemon {
            child: Some(child),
            ns: ns.to_owned(),
            api: api.to_string(),
            token: token.to_string(),
            log,
            cacert: how.cacert,
        };
        let start = Instant::now();
        while !d.get("/api/v1/health").contains("\"attached\":true") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon not healthy within 20 s: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if how.generate_token {
            let file = state.join("admin.token");
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            d.token = text.trim().to_owned();
        }
        d
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn base_url(&self) -> String {
        let scheme = if self.cacert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.api)
    }

    /// curl with `-s -m 5`, and `--cacert` when the API serves HTTPS.
    fn curl(&self) -> Vec<String> {
        let mut args: Vec<String> = ["curl", "-s", "-m", "5"].map(String::from).into();
        if let Some(ca) = &self.cacert {
            args.extend(["--cacert".to_owned(), ca.display().to_string()]);
        }
        args
    }

    /// GET `path` with the admin token; the body, or "" when the daemon does not answer.
    pub fn get(&self, path: &str) -> String {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = format!("{}{path}", self.base_url());
        let mut args = self.curl();
        args.extend(["-H".to_owned(), auth, url]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_in(&self.ns, &args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// POST `body` (JSON) to `path` with the admin token: the HTTP status and the answer.
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.send("POST", path, body)
    }

    /// `method` with `body` (JSON) to `path` with the admin token: the HTTP status and the answer.
    pub fn send(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = format!("{}{path}", self.base_url());
        let mut args = self.curl();
        args.extend(
            [
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                &url,
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_in(&self.ns, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// GET `path` as JSON (panics with the body when it is not JSON).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let body = self.get(path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The netguard process id (`ip netns exec` execs netguard in place), e.g. for /proc/PID/status.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the daemon has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (a crash), then everything it logged.
    pub fn kill(mut self) -> String {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        self.log_text()
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our child's pid (`ip netns exec` execs netguard in place).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait for netguard");
        (status, self.log_text())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `netguard detach --iface IFACE` in `ns` on the namespace's bpffs (as the harness starts daemons):
/// removes the program and every pin. Panics with the output when it fails.
pub fn detach(ns: &str, iface: &str) -> String {
    let bpffs = bpffs_for(ns);
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(netguard_bin())
        .args(["detach", "--iface", iface, "--bpffs"])
        .arg(&bpffs)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("netguard detach runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "netguard detach failed: {text}");
    text
}

/// The build variant an upgrade test replaces the daemon with.
pub const UPGRADE_VARIANT: &str = "upgrade-test";

/// A *different build* of netguard for upgrade tests: the same sources compiled with
/// `NETGUARD_BUILD_VARIANT=upgrade-test` (a constant of the binary, logged at start), kept as
/// `netguard-upgrade` beside [`netguard_bin`]. Built on first use (only the binary crate recompiles),
/// then the normal binary is rebuilt so the two stay distinct.
pub fn upgrade_bin() -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let bin = netguard_bin();
    let variant = bin.with_file_name("netguard-upgrade");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(v), Some(b)) = (mtime(&variant), mtime(&bin))
        && v >= b
    {
        return variant;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let profile = match bin.parent().and_then(|d| d.file_name()) {
        Some(n) if n == "release" => "release",
        _ => "dev",
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = |variant: Option<&str>| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(workspace).args([
            "build",
            "-p",
            "netguard-user",
            "--bin",
            "netguard",
            "--profile",
            profile,
        ]);
        match variant {
            Some(v) => cmd.env("NETGUARD_BUILD_VARIANT", v),
            None => cmd.env_remove("NETGUARD_BUILD_VARIANT"),
        };
        let out = cmd.output().expect("cargo runs");
        assert!(
            out.status.success(),
            "building netguard (variant {variant:?}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    build(Some(UPGRADE_VARIANT));
    std::fs::copy(&bin, &variant).expect("keep the variant build");
    build(None);
    // The copy must count as newer than the rebuilt normal binary for the next run's check.
    let now = std::fs::File::options()
        .append(true)
        .open(&variant)
        .expect("variant");
    now.set_modified(std::time::SystemTime::now())
        .expect("touch");
    variant
}

//! The real `netguard run` process, end to end, in a two-namespace lab: the CLI blocks the attacker,
//! the kernel drops its packets, the ring-buffer BLOCK_HIT event becomes a stored `blocklist_hit`
//! alert, /metrics shows the drops, SIGTERM detaches cleanly, and a restart restores the block from
//! the embedded store.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netguard_tests::netns::{ATTACKER_V4, NetnsPair, SENSOR_IF, SENSOR_V4, ping, require_root, run_in};

const TOKEN: &str = "daemon-test-admin-token-0123456789";
const API: &str = "127.0.0.1:9749";

fn netguard_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("netguard");
    assert!(bin.exists(), "{} is missing: `cargo build -p netguard-user --bin netguard` (cargo xtask test does)", bin.display());
    bin
}

struct Daemon(Child);

impl Daemon {
    fn start(lab: &NetnsPair, state: &std::path::Path) -> Daemon {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.sensor])
            .arg(netguard_bin())
            .args(["run", "--iface", SENSOR_IF, "--xdp-mode", "skb", "--listen", API, "--summary-every", "60", "--state-dir"])
            .arg(state)
            .env("NETGUARD_ADMIN_TOKEN", TOKEN)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("netguard starts");
        let d = Daemon(child);
        let start = Instant::now();
        while !curl(lab, "/api/v1/health").contains("\"attached\":true") {
            assert!(start.elapsed() < Duration::from_secs(20), "daemon not healthy within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// SIGTERM, then the exit status and everything it logged.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: plain kill(2) on our child's pid (`ip netns exec` execs netguard in place).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let out = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(lab: &NetnsPair, path: &str) -> String {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let out = run_in(&lab.sensor, &["curl", "-s", "-m", "5", "-H", &auth, &format!("http://{API}{path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli(lab: &NetnsPair, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.sensor])
        .arg(netguard_bin())
        .args(args)
        .args(["--api", &format!("http://{API}")])
        .env("NETGUARD_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "netguard {args:?} failed: {text}");
    text
}

#[test]
fn daemon_blocks_alerts_reports_and_restores() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("daemon");
    let state = tempfile::tempdir().unwrap();
    let (attacker, other) = (ATTACKER_V4[1].to_string(), ATTACKER_V4[2].to_string());
    let sensor = SENSOR_V4.to_string();

    let daemon = Daemon::start(&lab, state.path());
    assert_eq!(ping(&lab.attacker, &attacker, &sensor, 2).received, 2, "traffic flows before the block");

    let added = cli(&lab, &["block", "add", &attacker, "--ttl", "1h", "--reason", "daemon test"]);
    assert!(added.contains(&attacker), "{added}");
    assert_eq!(ping(&lab.attacker, &attacker, &sensor, 3).received, 0, "blocked source got through");
    assert_eq!(ping(&lab.attacker, &other, &sensor, 2).received, 2, "an unblocked source was dropped");

    // The kernel reported the blocked source; the daemon turned it into a stored alert.
    let start = Instant::now();
    let alerts = loop {
        let a = curl(&lab, "/api/v1/alerts?class=blocklist_hit");
        if a.contains(&attacker) {
            break a;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no blocklist_hit alert for {attacker}: {a}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(alerts.contains("\"action\":\"blocked\""), "{alerts}");

    let metrics = curl(&lab, "/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(value("netguard_drops_total{reason=\"blocklist_v4\"}") >= 3.0);
    assert!(value("netguard_alerts_total{class=\"blocklist_hit\"}") >= 1.0);
    assert_eq!(value("netguard_blocklist_entries{scope=\"global\"}"), 1.0);

    let (status, log) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {log}");
    assert!(log.contains("detached"), "{log}");
    let link = run_in(&lab.sensor, &["ip", "-d", "link", "show", SENSOR_IF]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("prog/xdp"), "program left attached after SIGTERM");
    assert_eq!(ping(&lab.attacker, &attacker, &sensor, 2).received, 2, "nothing enforces while stopped");

    // A restart restores the block from the embedded store before serving.
    let daemon = Daemon::start(&lab, state.path());
    assert_eq!(ping(&lab.attacker, &attacker, &sensor, 2).received, 0, "block not restored after restart");
    let removed = cli(&lab, &["block", "del", &attacker]);
    assert!(removed.contains("1 entry"), "{removed}");
    assert_eq!(ping(&lab.attacker, &attacker, &sensor, 2).received, 2, "unblock did not restore traffic");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

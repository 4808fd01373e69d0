//! Auth-log lines an attacker shapes, against the real daemon following a syslog-format file
//! (`--auth-log-format syslog`): a forged repeat count is clamped (100 events, not four billion), a
//! line over 16 KiB (a `logger` message ending in sshd's wording) is dropped whole, and a bare
//! `sshd -E`-style line is ignored; each is counted in /metrics, and only the clamped repeat
//! blocks its source.

use std::io::Write as _;
use std::time::{Duration, Instant};

use netguard_tests::daemon::Daemon;
use netguard_tests::netns::{NetnsPair, require_root};

const TOKEN: &str = "hostile-authlog-admin-token-0123456789";
const API: &str = "127.0.0.1:9753";

fn metric(d: &Daemon, name: &str) -> Option<u64> {
    let text = d.get("/metrics");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as u64)
}

#[test]
fn hostile_lines_are_clamped_dropped_and_ignored() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("hostile");
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("auth.log");
    std::fs::write(&log, "").unwrap();
    let log_arg = log.to_string_lossy().into_owned();
    let d = Daemon::start(
        &lab,
        state.path(),
        API,
        TOKEN,
        &[
            "--auth-log",
            &log_arg,
            "--auth-log-format",
            "syslog",
            "--sensor-id",
            "hostile",
        ],
    );

    let ts = chrono::Local::now().format("%b %e %H:%M:%S");
    let failed = |ip: &str| format!("Failed password for root from {ip} port 40000 ssh2");
    let lines = [
        // Four billion failures in one line: counted as 100.
        format!(
            "{ts} sensor sshd[7]: message repeated 4000000000 times: [ {}]\n",
            failed("198.51.100.7")
        ),
        // A `logger` line of 20 KiB whose tail is sshd's wording: its tail once read as a bare line.
        format!(
            "{ts} sensor logger: {} {}\n",
            "A".repeat(20 * 1024),
            failed("198.51.100.8")
        ),
        // A bare line, as `sshd -E` writes: in a syslog file anyone's.
        format!("{}\n", failed("198.51.100.9")),
    ];
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for l in &lines {
        f.write_all(l.as_bytes()).unwrap();
    }
    drop(f);

    let start = Instant::now();
    let want = [
        ("netguard_authlog_repeats_clamped_total", 1),
        ("netguard_authlog_overlong_lines_total", 1),
        ("netguard_authlog_wrong_shape_lines_total", 1),
        ("netguard_authlog_matched_total", 100),
        ("netguard_authlog_lines_total", 2),
    ];
    loop {
        let got: Vec<_> = want.iter().map(|(n, _)| metric(&d, n)).collect();
        if got.iter().zip(&want).all(|(g, (_, w))| *g == Some(*w)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "metrics {want:?} not reached: {got:?}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let blocks = d.get("/api/v1/blocklist");
    assert!(
        blocks.contains("198.51.100.7/32"),
        "the clamped repeat (100 failures) blocks: {blocks}"
    );
    assert!(
        !blocks.contains("198.51.100.8") && !blocks.contains("198.51.100.9"),
        "{blocks}"
    );
    let (status, text) = d.stop();
    assert!(status.success(), "{text}");
}

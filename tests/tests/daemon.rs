//! The real `netguard run` process, end to end, in a two-namespace lab: the CLI blocks the attacker,
//! the kernel drops its packets, the ring-buffer BLOCK_HIT event becomes a stored `blocklist_hit`
//! alert, /metrics shows the drops, SIGTERM leaves the block enforcing, `netguard detach` removes
//! everything, and a start restores the block from the embedded store.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use netguard_tests::daemon::{Daemon, Launch, netguard_bin};
use netguard_tests::netns::{
    ATTACKER_V4, NetnsPair, SENSOR_IF, SENSOR_V4, ping, require_root, run_in,
};

const TOKEN: &str = "daemon-test-admin-token-0123456789";
const API: &str = "127.0.0.1:9749";

fn launch(lab: &NetnsPair, state: &std::path::Path) -> Daemon {
    Daemon::start(lab, state, API, TOKEN, &[])
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

    let daemon = launch(&lab, state.path());
    assert_eq!(
        ping(&lab.attacker, &attacker, &sensor, 2).received,
        2,
        "traffic flows before the block"
    );

    let added = cli(
        &lab,
        &[
            "block",
            "add",
            &attacker,
            "--ttl",
            "1h",
            "--reason",
            "daemon test",
        ],
    );
    assert!(added.contains(&attacker), "{added}");
    assert_eq!(
        ping(&lab.attacker, &attacker, &sensor, 3).received,
        0,
        "blocked source got through"
    );
    assert_eq!(
        ping(&lab.attacker, &other, &sensor, 2).received,
        2,
        "an unblocked source was dropped"
    );

    // The kernel reported the blocked source; the daemon turned it into a stored alert.
    let start = Instant::now();
    let alerts = loop {
        let a = daemon.get("/api/v1/alerts?class=blocklist_hit");
        if a.contains(&attacker) {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no blocklist_hit alert for {attacker}: {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(alerts.contains("\"action\":\"blocked\""), "{alerts}");

    let metrics = daemon.get("/metrics");
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

    // SIGTERM leaves the program attached and enforcing: the pinned link outlives the daemon.
    let (status, log) = daemon.stop();
    assert!(status.success(), "daemon exit {status}: {log}");
    assert!(log.contains("stays attached and enforcing"), "{log}");
    let link = run_in(&lab.sensor, &["ip", "-d", "link", "show", SENSOR_IF]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("prog/xdp"),
        "program detached by SIGTERM"
    );
    assert_eq!(
        ping(&lab.attacker, &attacker, &sensor, 2).received,
        0,
        "the block is enforced while the daemon is stopped"
    );

    // `netguard detach` removes the program and every pin: the attacker gets replies again.
    let said = netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);
    assert!(said.contains("detached from"), "{said}");
    let bpffs = netguard_tests::netns::bpffs_for(&lab.sensor);
    assert!(
        !bpffs.join("netguard").exists(),
        "pins left in {}",
        bpffs.display()
    );
    let link = run_in(&lab.sensor, &["ip", "-d", "link", "show", SENSOR_IF]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "program left attached after netguard detach"
    );
    assert_eq!(
        ping(&lab.attacker, &attacker, &sensor, 2).received,
        2,
        "nothing enforces after detach"
    );

    // A restart restores the block from the embedded store before serving.
    let daemon = launch(&lab, state.path());
    assert_eq!(
        ping(&lab.attacker, &attacker, &sensor, 2).received,
        0,
        "block not restored after restart"
    );
    let removed = cli(&lab, &["block", "del", &attacker]);
    assert!(removed.contains("1 entry"), "{removed}");
    assert_eq!(
        ping(&lab.attacker, &attacker, &sensor, 2).received,
        2,
        "unblock did not restore traffic"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

/// With Redis down at start, a sensor that has run before enforces its local snapshot of the lists
/// (instead of exiting), and reconciles with Redis when it returns: an entry removed in Redis
/// meanwhile goes, one added there comes.
#[test]
fn redis_down_at_start_enforces_the_snapshot_then_reconciles() {
    use netguard_tests::netns::require_tool;
    use netguard_tests::redis_server::RedisServer;
    use std::os::unix::fs::MetadataExt as _;
    if !require_root() || !require_tool("redis-server") || !require_tool("redis-cli") {
        return;
    }
    let lab = NetnsPair::new("snapsh");
    let mut redis = RedisServer::start_in(&lab.sensor);
    let state = tempfile::tempdir().unwrap();
    let url = redis.url();
    let args = ["--redis", &url, "--sensor-id", "s1"];
    let sensor = SENSOR_V4.to_string();
    let [kept, removed, added] = ATTACKER_V4.map(|a| a.to_string());
    let block = |d: &Daemon, ip: &str| {
        let (code, body) = d.post(
            "/api/v1/blocklist",
            &format!(r#"{{"cidr": "{ip}/32", "reason": "snapshot"}}"#),
        );
        assert!((200..300).contains(&code), "block {ip}: {code} {body}");
    };

    let d = Daemon::start(&lab, state.path(), API, TOKEN, &args);
    block(&d, &kept);
    block(&d, &removed);
    let snap = state.path().join("lists-snapshot.json");
    let start = Instant::now();
    while !std::fs::read_to_string(&snap).is_ok_and(|s| s.contains(&format!("{removed}/32"))) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no snapshot written: {}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::metadata(&snap).unwrap().mode() & 0o777, 0o600);
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");

    // Meanwhile, elsewhere in the fleet: one entry removed, one added.
    let rid = format!("{removed}/32@global");
    redis.cli(&["SREM", "netguard:entries:block", &rid]);
    redis.cli(&["DEL", &format!("netguard:entry:block:{rid}")]);
    let aid = format!("{added}/32@global");
    redis.cli(&[
        "HSET",
        &format!("netguard:entry:block:{aid}"),
        "cidr",
        &format!("{added}/32"),
        "scope",
        "global",
        "source",
        "manual",
        "created_at",
        "2024-01-01T00:00:00Z",
    ]);
    redis.cli(&["SADD", "netguard:entries:block", &aid]);
    redis.kill();

    let d = Daemon::start(&lab, state.path(), API, TOKEN, &args);
    let text = d.log_text();
    assert!(text.contains("from the local snapshot"), "{text}");
    assert_eq!(
        ping(&lab.attacker, &kept, &sensor, 2).received,
        0,
        "snapshot entry not enforced"
    );
    assert_eq!(
        ping(&lab.attacker, &removed, &sensor, 2).received,
        0,
        "snapshot entry not enforced"
    );

    redis.restart();
    let start = Instant::now();
    loop {
        let list = d.get("/api/v1/blocklist");
        if list.contains(&format!("{added}/32")) && !list.contains(&format!("{removed}/32")) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no reconcile after Redis returned: {list}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ping(&lab.attacker, &added, &sensor, 2).received,
        0,
        "the entry added in Redis is not enforced"
    );
    assert!(
        ping(&lab.attacker, &removed, &sensor, 2).received > 0,
        "the entry removed in Redis is still enforced"
    );
    assert_eq!(ping(&lab.attacker, &kept, &sensor, 2).received, 0);
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
}

/// An installed binary carries its model: a copy of `netguard` in a scratch directory, with the
/// whole source tree hidden under an empty mount, loads the model embedded in it and says so; a
/// `--model` file that does not exist is an error naming it, never a silent fallback.
#[test]
fn a_binary_installed_elsewhere_runs_its_embedded_model() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("model");
    let state = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let bin = elsewhere.path().join("netguard");
    std::fs::copy(netguard_bin(), &bin).unwrap();
    let source_tree = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let how = Launch {
        bin: Some(bin.clone()),
        hide: Some(source_tree),
        ..Launch::default()
    };
    let daemon = Daemon::launch(&lab.sensor, SENSOR_IF, state.path(), API, TOKEN, &[], how);
    let log = daemon.log_text();
    assert!(
        log.contains("decision tree from the model embedded in this binary"),
        "{log}"
    );
    daemon.stop();

    let missing = elsewhere.path().join("no-such-model.json");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.sensor])
        .arg(&bin)
        .args(["run", "--iface", SENSOR_IF, "--xdp-mode", "skb"])
        .args(["--listen", API, "--state-dir"])
        .arg(state.path())
        .arg("--model")
        .arg(&missing)
        .env("NETGUARD_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a missing --model must stop the start: {err}"
    );
    assert!(
        err.contains("could not load the detection model") && err.contains("no-such-model.json"),
        "{err}"
    );
}

/// `PUT /api/v1/thresholds` outlives a restart (kept 0600 in the state dir), and the start says
/// they override the config.
#[test]
fn thresholds_set_over_the_api_survive_a_restart() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("thresh");
    let state = tempfile::tempdir().unwrap();
    let daemon = launch(&lab, state.path());
    let mut t = daemon.get_json("/api/v1/thresholds");
    t["global"]["max_retry"] = 23.into();
    t["per_vm"]["find_time"] = "7m".into();
    let (code, body) = daemon.send("PUT", "/api/v1/thresholds", &t.to_string());
    assert_eq!(code, 200, "{body}");
    let set = daemon.get_json("/api/v1/thresholds");
    daemon.stop();
    let file = state.path().join("thresholds.json");
    let mode = std::fs::metadata(&file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let daemon = launch(&lab, state.path());
    assert_eq!(daemon.get_json("/api/v1/thresholds"), set);
    assert_eq!(set["global"]["max_retry"], 23);
    assert!(
        daemon
            .log_text()
            .contains("thresholds.json (set by PUT /api/v1/thresholds)"),
        "{}",
        daemon.log_text()
    );
    daemon.stop();
}

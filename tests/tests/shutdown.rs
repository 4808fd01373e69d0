//! Clean shutdown of the real daemon during a Redis outage: blocks made through the REST API while
//! redis-server is down are enforced at once; SIGTERM cannot deliver them, so the daemon keeps them
//! in its state dir (0600) and says what they are; after Redis and the daemon restart, every block
//! is in Redis and in the kernel (pings from the blocked addresses are dropped). Redis runs on the
//! sensor namespace's own loopback.

use std::os::unix::fs::MetadataExt as _;

use netguard_tests::daemon::Daemon;
use netguard_tests::netns::{ATTACKER_V4, NetnsPair, SENSOR_V4, ping, require_root, require_tool};
use netguard_tests::redis_server::RedisServer;

const TOKEN: &str = "shutdown-test-admin-token-0123456789";
const API: &str = "127.0.0.1:9751";

fn block(d: &Daemon, ip: &str) {
    let (code, body) = d.post(
        "/api/v1/blocklist",
        &format!(r#"{{"cidr": "{ip}/32", "ttl": "1h", "reason": "outage"}}"#),
    );
    assert!((200..300).contains(&code), "block {ip}: {code} {body}");
}

#[test]
fn blocks_made_during_a_redis_outage_survive_sigterm_and_restart() {
    if !require_root() || !require_tool("redis-server") || !require_tool("redis-cli") {
        return;
    }
    let lab = NetnsPair::new("shutdn");
    let mut redis = RedisServer::start_in(&lab.sensor);
    let state = tempfile::tempdir().unwrap();
    let cfg = state.path().join("netguard.toml");
    std::fs::write(&cfg, "[store]\nshutdown_flush = \"1s\"\n").unwrap();
    let url = redis.url();
    let cfg_arg = cfg.to_string_lossy().into_owned();
    let args = ["--redis", &url, "--sensor-id", "s1", "--config", &cfg_arg];
    let sensor = SENSOR_V4.to_string();
    let (before, during1, during2) = (
        ATTACKER_V4[0].to_string(),
        ATTACKER_V4[1].to_string(),
        ATTACKER_V4[2].to_string(),
    );

    let d = Daemon::start(&lab, state.path(), API, TOKEN, &args);
    block(&d, &before);
    redis.kill();
    block(&d, &during1);
    block(&d, &during2);
    assert_eq!(
        ping(&lab.attacker, &during1, &sensor, 2).received,
        0,
        "not enforced during the outage"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let kept_line = log
        .lines()
        .find(|l| l.contains("not written to the store:"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        kept_line.contains("2 blocklist puts") && kept_line.contains("store-unwritten.json"),
        "{kept_line}"
    );
    let kept = state.path().join("store-unwritten.json");
    assert_eq!(std::fs::metadata(&kept).unwrap().mode() & 0o777, 0o600);

    redis.restart();
    let d = Daemon::start(&lab, state.path(), API, TOKEN, &args);
    let text = d.log_text();
    let replayed = text
        .lines()
        .find(|l| l.contains("replayed the store writes kept at the last shutdown:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(replayed.contains("2 blocklist puts"), "{replayed}");
    assert!(!kept.exists(), "kept writes not removed after the replay");
    let ids = redis.cli(&["SMEMBERS", "netguard:entries:block"]);
    for ip in [&before, &during1, &during2] {
        assert!(
            ids.contains(&format!("{ip}/32")),
            "{ip} not in Redis: {ids}"
        );
        assert_eq!(
            ping(&lab.attacker, ip, &sensor, 2).received,
            0,
            "{ip} not blocked in the kernel after the restart"
        );
    }
    let (status, log) = d.stop();
    assert!(
        status.success() && !log.contains("not written to the store"),
        "{log}"
    );
}

//! The automatic response cannot be aimed: the real daemon with the shipped model, attacked by hping3
//! and nmap with FORGED source addresses (`-a`, `-S`, decoys `-D`) from the attacker namespace.
//!
//! - Forged floods and scans whose source is an address the sensor depends on (a resolver from its
//!   resolv.conf, a route's next hop, its Redis server, a fleet peer, a configured never-block
//!   address) block nothing and raise exactly one `refused` alert each.
//! - A forged source that is not protected gets only a short, local, unescalated block, even with
//!   `scope = "global"` configured.
//! - A scan from more sources than the automatic blocks may take: the reserve holds, a manual block
//!   still fits, and exactly one cap alert is raised.
//! - REST blocks that overlap the never-block set are refused with a 400 naming the reason, unless
//!   forced; `GET /api/v1/never-block` names where each entry came from.
//!
//! Lab: the usual sensor/attacker pair, plus a "spur" namespace on its own link (10.214.0.0/24)
//! holding the Redis server and a second sensor (the fleet peer). No namespace has a default route;
//! every tool is bounded in count and time; everything is removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netguard_tests::daemon::Daemon;
use netguard_tests::netns::{
    ATTACKER_IF, NetnsPair, SENSOR_V4, require_root, require_tool, run_in, run_in_timeout,
};
use netguard_tests::spur::{SPUR_IF, SPUR_V4, Spur};
use serde_json::Value;

const TOKEN: &str = "trust-test-admin-token-0123456789";
const REDIS_PORT: &str = "6391";
const RESOLVER: &str = "10.213.53.53";
const NEXT_HOP: &str = "10.213.1.254";
const CONFIGURED: &str = "10.213.99.9";

/// /etc/netns/NS/resolv.conf, which `ip netns exec NS` mounts over /etc/resolv.conf; removed on drop.
struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    fn write(ns: &str, nameserver: &str) -> Self {
        let dir = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("# netguard trust test\nnameserver {nameserver}\n"),
        )
        .unwrap();
        NetnsResolvConf(dir)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// redis-server inside the spur namespace, on the spur's first address; killed on drop.
struct SpurRedis(Child);

impl SpurRedis {
    fn start(spur: &Spur, dir: &std::path::Path) -> Self {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &spur.ns,
                "redis-server",
                "--bind",
                SPUR_V4[0],
                "--port",
                REDIS_PORT,
            ])
            // Not loopback, so protected mode would refuse the sensor; the namespace is private to the test.
            .args([
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `cargo xtask setup`");
        let r = SpurRedis(child);
        let t0 = Instant::now();
        while !String::from_utf8_lossy(
            &run_in(
                &spur.ns,
                &["redis-cli", "-h", SPUR_V4[0], "-p", REDIS_PORT, "ping"],
            )
            .stdout,
        )
        .contains("PONG")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }
}

impl Drop for SpurRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bounded tool run in the attacker namespace, waited for.
fn attack(lab: &NetnsPair, limit: Duration, args: &[&str]) {
    let out = run_in_timeout(&lab.attacker, limit, args);
    // hping3 exits 1 when nothing answered, which forged probes never get; timeout kills are 124.
    assert!(
        matches!(out.status.code(), Some(0 | 1 | 124)),
        "{args:?}: {out:?}"
    );
}

fn alerts_from(d: &Daemon, src: &str) -> Vec<Value> {
    d.get_json(&format!("/api/v1/alerts?src={src}&limit=100"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn blocked(d: &Daemon, addr: &str) -> Vec<Value> {
    let ip: std::net::IpAddr = addr.parse().unwrap();
    entries(d)
        .into_iter()
        .filter(|e| {
            e["cidr"]
                .as_str()
                .and_then(|c| c.parse::<ipnet::IpNet>().ok())
                .is_some_and(|n| n.contains(&ip))
        })
        .collect()
}

fn entries(d: &Daemon) -> Vec<Value> {
    let list = d.get_json("/api/v1/blocklist?limit=1000");
    list.as_array()
        .cloned()
        .unwrap_or_else(|| panic!("GET /blocklist: {list}"))
}

fn wait_for(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<Value>,
    context: impl Fn() -> String,
) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < within,
            "{what} not seen within {within:?}: {}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn origins(d: &Daemon) -> Vec<(String, String)> {
    d.get_json("/api/v1/never-block")["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["cidr"].as_str().unwrap_or("").to_owned(),
                e["origin"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn forged_sources_the_host_depends_on_are_never_blocked() {
    if !require_root()
        || !require_tool("hping3")
        || !require_tool("nmap")
        || !require_tool("redis-server")
    {
        return;
    }
    let lab = NetnsPair::new("trust");
    let spur = Spur::new(&lab);
    assert!(
        spur.reachable(&lab, SPUR_V4[0]),
        "the spur link does not work"
    );
    // A route through a next hop on the attacker's link (a documentation prefix: nothing is sent).
    let out = run_in(
        &lab.sensor,
        &["ip", "route", "add", "198.51.100.0/24", "via", NEXT_HOP],
    );
    assert!(out.status.success(), "{out:?}");
    let _resolv = NetnsResolvConf::write(&lab.sensor, RESOLVER);
    let scratch = tempfile::tempdir().unwrap();
    let _redis = SpurRedis::start(&spur, scratch.path());
    let url = format!("redis://{}:{REDIS_PORT}/0", SPUR_V4[0]);

    // The fleet peer: a second sensor on the same Redis, in the spur namespace.
    let peer_state = tempfile::tempdir().unwrap();
    let peer = Daemon::start_in(
        &spur.ns,
        SPUR_IF,
        peer_state.path(),
        "127.0.0.1:9741",
        TOKEN,
        &["--redis", &url, "--sensor-id", "peer-1"],
    );

    let state = tempfile::tempdir().unwrap();
    let cfg = state.path().join("netguard.toml");
    std::fs::write(
        &cfg,
        format!(
            "[trust]\nnever_block = [\"{CONFIGURED}\"]\nrefresh = \"500ms\"\n\
             [detect.response]\nscope = \"global\"\nforgeable_ttl = \"4s\"\n"
        ),
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let d = Daemon::start(
        &lab,
        state.path(),
        "127.0.0.1:9740",
        TOKEN,
        &["--redis", &url, "--sensor-id", "edge-1", "--config", &cfg],
    );

    // GET /never-block names each source, the fleet peer once both have refreshed.
    let want = [
        (format!("{SENSOR_V4}/32"), "own_address"),
        (format!("{NEXT_HOP}/32"), "route_next_hop"),
        (format!("{RESOLVER}/32"), "resolver"),
        (format!("{}/32", SPUR_V4[0]), "redis"),
        (format!("{}/32", SPUR_V4[1]), "fleet_peer"),
        (format!("{CONFIGURED}/32"), "config"),
    ];
    wait_for(
        Duration::from_secs(10),
        "every never-block origin",
        || {
            let have = origins(&d);
            want.iter()
                .all(|(c, o)| have.iter().any(|(hc, ho)| hc == c && ho == o))
                .then_some(Value::Null)
        },
        || format!("{:?}", origins(&d)),
    );

    // REST: a block overlapping the set is refused with the reason, unless forced.
    let (code, body) = d.post(
        "/api/v1/blocklist",
        &format!("{{\"cidr\": \"{RESOLVER}\"}}"),
    );
    assert_eq!(code, 400, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["field"], "cidr", "{body}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("resolver in /etc/resolv.conf"),
        "{body}"
    );
    let (code, body) = d.post("/api/v1/blocklist", "{\"cidr\": \"10.213.0.0/16\"}");
    assert_eq!(
        code, 400,
        "a prefix covering protected addresses is refused too: {body}"
    );
    let (code, body) = d.post(
        "/api/v1/blocklist",
        &format!("{{\"cidr\": \"{CONFIGURED}\", \"ttl\": \"2s\", \"force\": true}}"),
    );
    assert!(code == 200 || code == 201, "force overrides: {code} {body}");
    assert_eq!(blocked(&d, CONFIGURED).len(), 1);
    // Let the forced block expire before the configured address is forged below.
    wait_for(
        Duration::from_secs(8),
        "the forced block's expiry",
        || blocked(&d, CONFIGURED).is_empty().then_some(Value::Null),
        || d.get("/api/v1/blocklist"),
    );

    let target = SENSOR_V4.to_string();
    let cases: [(&str, &str, Vec<&str>); 5] = [
        (
            RESOLVER,
            "syn_flood",
            vec![
                "hping3", "-q", "-S", "-p", "80", "-a", RESOLVER, "-c", "8000", "-i", "u250",
                &target,
            ],
        ),
        // nmap cannot route with `-S` an address its interface lacks; a decoy (`-D`) is the same
        // forgery, sent beside the real scanner's own probes.
        (
            NEXT_HOP,
            "port_scan",
            vec![
                "nmap",
                "-sS",
                "-Pn",
                "-n",
                "-e",
                ATTACKER_IF,
                "-D",
                NEXT_HOP,
                "-p",
                "1-1500",
                "--max-retries",
                "0",
                "--min-rate",
                "400",
                "--max-rate",
                "500",
                "--host-timeout",
                "20s",
                &target,
            ],
        ),
        (
            SPUR_V4[0],
            "udp_flood",
            vec![
                "hping3", "-q", "--udp", "-p", "5353", "-a", SPUR_V4[0], "-c", "8000", "-i",
                "u300", &target,
            ],
        ),
        (
            SPUR_V4[1],
            "port_scan",
            vec![
                "hping3", "-q", "-S", "-p", "++1", "-a", SPUR_V4[1], "-c", "1200", "-i", "u2000",
                &target,
            ],
        ),
        (
            CONFIGURED,
            "icmp_flood",
            vec![
                "hping3", "-q", "--icmp", "-a", CONFIGURED, "-c", "8000", "-i", "u250", &target,
            ],
        ),
    ];
    for (src, class, tool) in &cases {
        attack(&lab, Duration::from_secs(25), tool);
        let alert = wait_for(
            Duration::from_secs(8),
            &format!("a refused {class} alert from forged {src}"),
            || {
                alerts_from(&d, src)
                    .into_iter()
                    .find(|a| a["action"] == "refused" && a["class"] == *class)
            },
            || format!("alerts {:?}\nlog {}", alerts_from(&d, src), d.log_text()),
        );
        assert_eq!(alert["class"], *class, "{alert}");
        assert!(alert["evidence"]["never_block"].is_string(), "{alert}");
        // Give the detector a few more windows: still one refused alert (an alert under the block
        // threshold may have come first), and never a block.
        std::thread::sleep(Duration::from_secs(3));
        let all = alerts_from(&d, src);
        // One refused alert per class (a fast scan can also be a SYN flood), none repeated.
        let mut refused: Vec<&str> = all
            .iter()
            .filter(|a| a["action"] == "refused")
            .filter_map(|a| a["class"].as_str())
            .collect();
        refused.sort_unstable();
        let n = refused.len();
        refused.dedup();
        assert_eq!(
            n,
            refused.len(),
            "a refused alert repeated for {src}: {all:?}"
        );
        assert!(all.iter().all(|a| a["action"] != "blocked"), "{all:?}");
        assert!(
            blocked(&d, src).is_empty(),
            "{src} was blocked: {}",
            d.get("/api/v1/blocklist")
        );
        assert!(
            blocked(&peer, src).is_empty(),
            "{src} was blocked through the peer's store"
        );
    }

    // An unprotected forged source: a short, local block, the same length every time.
    let forged = "10.213.77.77";
    let mut ttls = Vec::new();
    for round in 0..2 {
        attack(
            &lab,
            Duration::from_secs(15),
            &[
                "hping3", "-q", "-S", "-p", "443", "-a", forged, "-c", "4000", "-i", "u400",
                &target,
            ],
        );
        let entry = wait_for(
            Duration::from_secs(8),
            &format!("the auto block of forged {forged} (round {round})"),
            || blocked(&d, forged).into_iter().next(),
            || format!("{:?}\n{}", alerts_from(&d, forged), d.log_text()),
        );
        assert_eq!(
            entry["scope"], "edge-1",
            "local although scope = global: {entry}"
        );
        assert_eq!(entry["source"], "auto", "{entry}");
        let created =
            chrono::DateTime::parse_from_rfc3339(entry["created_at"].as_str().unwrap()).unwrap();
        let expires =
            chrono::DateTime::parse_from_rfc3339(entry["expires_at"].as_str().unwrap()).unwrap();
        ttls.push((expires - created).num_seconds());
        let on_peer = blocked(&peer, forged);
        assert!(
            on_peer.iter().all(|e| e["enforced"] == false),
            "a local block is not enforced by the peer: {on_peer:?}"
        );
        wait_for(
            Duration::from_secs(10),
            "the forged block's expiry",
            || blocked(&d, forged).is_empty().then_some(Value::Null),
            || d.get("/api/v1/blocklist"),
        );
    }
    assert_eq!(ttls, [4, 4], "short and never escalated");
    let limited: Vec<Value> = alerts_from(&d, forged)
        .into_iter()
        .filter(|a| a["action"] == "blocked" && a["class"] != "blocklist_hit")
        .collect();
    assert_eq!(limited.len(), 2, "{limited:?}");
    assert!(
        limited.iter().all(|a| a["evidence"]["response"]
            .as_str()
            .is_some_and(|r| r.starts_with("limited"))),
        "{limited:?}"
    );
    drop(peer);
}

#[test]
fn a_scan_from_many_sources_cannot_fill_the_blocklist() {
    if !require_root() || !require_tool("nmap") {
        return;
    }
    let lab = NetnsPair::new("trustcap");
    let state = tempfile::tempdir().unwrap();
    let cfg = state.path().join("netguard.toml");
    // 16 IPv4 entries; automatic blocks may use 12 of them.
    std::fs::write(
        &cfg,
        "[datapath]\nblocklist_v4_max = 16\n[control.auto_caps]\nreserved_share = 0.25\n",
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let d = Daemon::start(
        &lab,
        state.path(),
        "127.0.0.1:9742",
        TOKEN,
        &["--config", &cfg],
    );

    // The real scanner plus 20 decoys on the attacker's link: 21 sources, all scanning.
    let decoys: Vec<String> = (1..=20).map(|i| format!("10.213.200.{i}")).collect();
    let decoys = decoys.join(",");
    let target = SENSOR_V4.to_string();
    attack(
        &lab,
        Duration::from_secs(40),
        &[
            "nmap",
            "-sS",
            "-Pn",
            "-n",
            "-e",
            ATTACKER_IF,
            "-D",
            &decoys,
            "-p",
            "1-400",
            "--max-retries",
            "0",
            "--min-rate",
            "150",
            "--host-timeout",
            "30s",
            &target,
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let entries = entries(&d);
    let auto = entries.iter().filter(|e| e["source"] == "auto").count();
    assert_eq!(
        auto, 12,
        "the automatic blocks stop at the reserve: {entries:?}"
    );
    let caps: Vec<Value> = d
        .get_json("/api/v1/alerts?limit=1000")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["evidence"].get("cap").is_some())
        .collect();
    assert_eq!(caps.len(), 1, "exactly one cap alert: {caps:?}");
    assert_eq!(
        (
            caps[0]["action"].as_str(),
            caps[0]["evidence"]["cap"].as_str()
        ),
        (Some("refused"), Some("reserve"))
    );
    assert_eq!(caps[0]["src_ip"], "0.0.0.0");
    let metrics = d.get("/metrics");
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("netguard_response_capped_total{cap=\"reserve\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        refused >= 9.0,
        "at least the 9 sources over the cap were counted: {refused}"
    );
    // People's blocks still fit: the four reserved entries.
    for i in 1..=4 {
        let (code, body) = d.post(
            "/api/v1/blocklist",
            &format!("{{\"cidr\": \"192.0.2.{i}\", \"reason\": \"manual\"}}"),
        );
        assert!(
            code == 200 || code == 201,
            "manual block {i} refused: {code} {body}"
        );
    }
}

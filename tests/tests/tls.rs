//! TLS end to end, with a private CA made by `openssl` for each test:
//! - the real daemon serves its API over HTTPS only when `[api] tls_cert`/`tls_key` are set: curl
//!   with `--cacert` gets answers, plain `http://` gets none; the CLI with `--cacert` adds a block
//!   that the kernel enforces (pings dropped), without it fails and says `--cacert`; an API client
//!   over TLS is still seen with its address (it joins the never-block set, which needs
//!   `ConnectInfo<SocketAddr>`); a missing or unparsable certificate or key stops the daemon at
//!   start, naming the file and the setting, before anything is attached;
//! - `rediss://` to a TLS-only redis-server with `requirepass`, the URL from `NETGUARD_REDIS_URL`
//!   or a file and the CA from `--redis-ca` or `[store] redis_ca`: a block round-trips through
//!   Redis into a second daemon's kernel; without the CA, with a wrong password, with the URL on the
//!   command line and during an outage the password appears in no output of the daemon or the CLI.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use netguard_tests::daemon::{Daemon, Launch, netguard_bin};
use netguard_tests::netns::{
    ATTACKER_V4, NetnsPair, SENSOR_IF, SENSOR_V4, ping, require_root, require_tool, run_in,
};
use netguard_tests::pki::Pki;
use netguard_tests::redis_server::TlsRedis;

const TOKEN: &str = "tls-test-admin-token-0123456789abcdef";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `netguard ARGS...` as a CLI inside `ns`, with the admin token in its environment.
fn cli(ns: &str, args: &[&str]) -> Output {
    let bin = netguard_bin();
    let token = format!("NETGUARD_TOKEN={TOKEN}");
    let mut all = vec!["env", &token, bin.to_str().unwrap()];
    all.extend(args);
    run_in(ns, &all)
}

fn no_xdp_on(ns: &str, dev: &str) {
    let link = Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "a program stayed attached to {dev}"
    );
}

#[test]
fn https_api_serves_tls_only_and_the_cli_needs_the_ca() {
    if !require_root() || !require_tool("curl") || !require_tool("openssl") {
        return;
    }
    let lab = NetnsPair::new("tls");
    let pki = Pki::new(&[&format!("IP:{SENSOR_V4}"), "IP:127.0.0.1"]);
    let state = tempfile::tempdir().unwrap();
    let api = format!("{SENSOR_V4}:9740");
    let cfg = pki.api_config();
    let cfg = cfg.to_str().unwrap();
    let ca = pki.ca.to_str().unwrap();
    let how = Launch {
        cacert: Some(pki.ca.clone()),
        ..Launch::default()
    };
    // Healthy over HTTPS, with curl trusting the test CA.
    let d = Daemon::launch(
        &lab.sensor,
        SENSOR_IF,
        state.path(),
        &api,
        TOKEN,
        &["--config", cfg],
        how,
    );
    let base = d.base_url();
    assert!(
        d.log_text().contains(&format!("on {base}")),
        "{}",
        d.log_text()
    );
    assert!(
        d.get_json("/api/v1/health")["datapath"]["attached"]
            .as_bool()
            .unwrap()
    );

    // Plain HTTP on the same port gets no HTTP answer, and there is no second listener.
    let plain = run_in(
        &lab.sensor,
        &[
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{api}/api/v1/health"),
        ],
    );
    assert!(
        !plain.status.success() && String::from_utf8_lossy(&plain.stdout) == "000",
        "plain HTTP answered: {}",
        text(&plain)
    );
    // curl without the CA refuses the certificate (exit 60: peer certificate cannot be authenticated).
    let untrusted = run_in(
        &lab.sensor,
        &["curl", "-s", "-m", "3", &format!("{base}/api/v1/health")],
    );
    assert_eq!(untrusted.status.code(), Some(60), "{}", text(&untrusted));

    // The CLI with --cacert: the block is enforced in the kernel when the command returns.
    let (blocked, other, sensor) = (
        ATTACKER_V4[1].to_string(),
        ATTACKER_V4[2].to_string(),
        SENSOR_V4.to_string(),
    );
    assert_eq!(
        ping(&lab.attacker, &blocked, &sensor, 2).received,
        2,
        "traffic flows before the block"
    );
    let add = cli(
        &lab.sensor,
        &[
            "block",
            "add",
            "10.213.66.0/24",
            "--reason",
            "over tls",
            "--api",
            &base,
            "--cacert",
            ca,
        ],
    );
    assert!(add.status.success(), "{}", text(&add));
    assert!(
        text(&add).contains("blocked 10.213.66.0/24"),
        "{}",
        text(&add)
    );
    assert_eq!(
        ping(&lab.attacker, &blocked, &sensor, 3).received,
        0,
        "the block made over HTTPS is not enforced"
    );
    assert_eq!(
        ping(&lab.attacker, &other, &sensor, 2).received,
        2,
        "an unblocked source was dropped"
    );
    let list = cli(
        &lab.sensor,
        &["block", "list", "--api", &base, "--cacert", ca],
    );
    assert!(
        list.status.success()
            && text(&list).contains("10.213.66.0/24")
            && text(&list).contains("over tls"),
        "{}",
        text(&list)
    );
    let status = cli(&lab.sensor, &["status", "--api", &base, "--cacert", ca]);
    assert!(
        status.status.success() && text(&status).contains("1 blocklist"),
        "{}",
        text(&status)
    );

    // Without --cacert: a clear refusal that names the fix, and nothing changes.
    let refused = cli(
        &lab.sensor,
        &["block", "add", "10.213.77.0/24", "--api", &base],
    );
    let msg = text(&refused);
    assert!(!refused.status.success(), "{msg}");
    assert!(
        msg.contains("certificate") && msg.contains("--cacert"),
        "{msg}"
    );
    // A CA file that is not one is named as such.
    let junk = cli(&lab.sensor, &["status", "--api", &base, "--cacert", cfg]);
    assert!(
        !junk.status.success()
            && text(&junk).contains("--cacert")
            && text(&junk).contains("netguard.toml"),
        "{}",
        text(&junk)
    );
    // https:// to a plain-HTTP port says so.
    let wrong = cli(
        &lab.sensor,
        &["status", "--api", "https://127.0.0.1:1", "--cacert", ca],
    );
    assert!(!wrong.status.success(), "{}", text(&wrong));

    // An API client over TLS is known by its address: it joins the never-block set.
    let auth = format!("Authorization: Bearer {TOKEN}");
    let remote = run_in(
        &lab.attacker,
        &[
            "curl",
            "-s",
            "-m",
            "5",
            "--cacert",
            ca,
            "-H",
            &auth,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/api/v1/blocklist"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        "200",
        "{}",
        text(&remote)
    );
    let nb = d.get("/api/v1/never-block");
    let client = ATTACKER_V4[0].to_string();
    assert!(
        nb.contains(&client) && nb.contains("api_client"),
        "the TLS client's address was not seen: {nb}"
    );

    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);
    no_xdp_on(&lab.sensor, SENSOR_IF);
}

#[test]
fn bad_certificate_or_key_stops_the_daemon_before_it_attaches() {
    if !require_root() || !require_tool("openssl") {
        return;
    }
    let lab = NetnsPair::new("tlsbad");
    let pki = Pki::new(&["IP:127.0.0.1"]);
    let dir = pki.dir.path();
    let other = Pki::new(&["IP:127.0.0.1"]);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not PEM at all\n").unwrap();
    let cases: [(&Path, &Path, &[&str]); 4] = [
        (
            &dir.join("missing.pem"),
            &pki.key,
            &["missing.pem", "tls_cert"],
        ),
        (&pki.cert, &junk, &["junk.pem", "tls_key", "private key"]),
        (&junk, &pki.key, &["junk.pem", "tls_cert", "no certificate"]),
        (&pki.cert, &other.key, &["tls_key", "does not fit"]),
    ];
    for (i, (cert, key, want)) in cases.iter().enumerate() {
        let cfg = dir.join(format!("bad{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[api]\ntls_cert = {:?}\ntls_key = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        )
        .unwrap();
        let state = tempfile::tempdir().unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.sensor])
            .arg(netguard_bin())
            .args([
                "run",
                "--iface",
                SENSOR_IF,
                "--xdp-mode",
                "skb",
                "--config",
                cfg.to_str().unwrap(),
                "--bpffs",
                netguard_tests::netns::bpffs_for(&lab.sensor)
                    .to_str()
                    .unwrap(),
                "--state-dir",
            ])
            .arg(state.path())
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let msg = text(&out);
        assert!(!out.status.success(), "case {i} started: {msg}");
        for w in *want {
            assert!(msg.contains(w), "case {i}: `{w}` missing from: {msg}");
        }
        assert!(
            !msg.contains("attached to"),
            "case {i} attached before refusing: {msg}"
        );
        no_xdp_on(&lab.sensor, SENSOR_IF);
    }
}

#[test]
fn rediss_with_a_private_ca_round_trips_and_never_shows_the_password() {
    if !require_root()
        || !require_tool("redis-server")
        || !require_tool("openssl")
        || !require_tool("curl")
    {
        return;
    }
    const PASSWORD: &str = "Pw-never-in-logs-5f3a91";
    const WRONG: &str = "Wrong-pw-also-hidden-77c2";
    let lab = NetnsPair::new("rediss");
    let pki = Pki::new(&["IP:127.0.0.1", "DNS:localhost"]);
    let mut redis = TlsRedis::start(&lab.sensor, 6390, &pki, Some(PASSWORD));
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:6390/0");
    let ca = pki.ca.to_str().unwrap();
    let env = |u: &str| Launch {
        env: vec![("NETGUARD_REDIS_URL".into(), u.to_owned())],
        ..Launch::default()
    };
    let mut outputs: Vec<String> = Vec::new();

    // Sensor A: URL from the environment, CA from the flag. A block goes to Redis.
    let state_a = tempfile::tempdir().unwrap();
    let a = Daemon::launch(
        &lab.sensor,
        SENSOR_IF,
        state_a.path(),
        "127.0.0.1:9740",
        TOKEN,
        &["--redis-ca", ca, "--sensor-id", "tls-a"],
        env(&url),
    );
    let health = a.get_json("/api/v1/health");
    assert_eq!(health["store"]["backend"], "redis", "{health}");
    assert_eq!(health["store"]["reachable"], true, "{health}");
    assert!(
        a.log_text()
            .contains("Redis store at rediss://:***@127.0.0.1:6390/0 (from NETGUARD_REDIS_URL)"),
        "{}",
        a.log_text()
    );
    let (code, body) = a.post(
        "/api/v1/blocklist",
        r#"{"cidr": "10.213.66.0/24", "reason": "via rediss"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let (status, log) = a.stop();
    assert!(status.success(), "{log}");
    outputs.push(log);

    // Sensor B on a fresh state dir: URL from a file, CA from [store] redis_ca. The block comes
    // back from Redis into its kernel.
    let url_file = pki.dir.path().join("redis.url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let cfg = pki.dir.path().join("store.toml");
    std::fs::write(&cfg, format!("[store]\nredis_ca = {ca:?}\n")).unwrap();
    let state_b = tempfile::tempdir().unwrap();
    let extra = [
        "--redis-url-file",
        url_file.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--sensor-id",
        "tls-b",
    ];
    let b = Daemon::launch(
        &lab.sensor,
        SENSOR_IF,
        state_b.path(),
        "127.0.0.1:9740",
        TOKEN,
        &extra,
        Launch::default(),
    );
    let list = b.get("/api/v1/blocklist");
    assert!(
        list.contains("10.213.66.0/24") && list.contains("via rediss"),
        "not restored from Redis: {list}"
    );
    let (blocked, sensor) = (ATTACKER_V4[1].to_string(), SENSOR_V4.to_string());
    assert_eq!(
        ping(&lab.attacker, &blocked, &sensor, 3).received,
        0,
        "the block from Redis is not in the kernel"
    );
    assert!(
        b.log_text().contains("chmod 600"),
        "a world-readable URL file with a password is not flagged: {}",
        b.log_text()
    );

    // Outage: writes queue, the status shows the store unreachable, by location only.
    redis.kill();
    let (code, body) = b.post("/api/v1/blocklist", r#"{"cidr": "10.213.77.0/24"}"#);
    assert_eq!(code, 200, "{body}");
    let start = Instant::now();
    loop {
        let out = cli(&lab.sensor, &["status", "--api", "http://127.0.0.1:9740"]);
        let t = text(&out);
        if t.contains("UNREACHABLE") {
            assert!(t.contains("rediss://127.0.0.1:6390"), "{t}");
            outputs.push(t);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "status never showed the outage: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    redis.restart();
    let start = Instant::now();
    while !b.get("/api/v1/health").contains("\"reachable\":true") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "store did not come back: {}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, log) = b.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("unreachable"),
        "the outage was not logged: {log}"
    );
    outputs.push(log);

    // Failures at start, each on `lo` with its own state: they must explain and stay silent
    // about the password.
    let fail = |extra: &[&str], env: &[(&str, String)]| -> String {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.sensor])
            .arg(netguard_bin())
            .args([
                "run",
                "--iface",
                "lo",
                "--xdp-mode",
                "skb",
                "--listen",
                "127.0.0.1:9741",
                "--bpffs",
                netguard_tests::netns::bpffs_for(&lab.sensor)
                    .to_str()
                    .unwrap(),
                "--state-dir",
            ])
            .arg(state.path())
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let t = text(&out);
        assert!(!out.status.success(), "started: {t}");
        t
    };
    // Without the CA: the server's certificate is not trusted, and the fix is named.
    let t = fail(&[], &[("NETGUARD_REDIS_URL", url.clone())]);
    assert!(
        t.contains("redis_ca") && t.contains("rediss://127.0.0.1:6390"),
        "{t}"
    );
    outputs.push(t);
    // A wrong password, from the environment.
    let wrong = format!("rediss://:{WRONG}@127.0.0.1:6390/0");
    let t = fail(
        &["--redis-ca", ca],
        &[("NETGUARD_REDIS_URL", wrong.clone())],
    );
    assert!(t.contains("could not open the state store"), "{t}");
    outputs.push(t);
    // On the command line: a warning about `ps`, and still no password in the output.
    let t = fail(&["--redis-ca", ca, "--redis", &wrong], &[]);
    assert!(
        t.contains("`ps`") && t.contains("NETGUARD_REDIS_URL"),
        "{t}"
    );
    outputs.push(t);
    // An unparsable URL with a password is shown redacted.
    let t = fail(
        &["--redis-ca", ca],
        &[(
            "NETGUARD_REDIS_URL",
            format!("rediss://:{WRONG}@127.0.0.1:notaport/0"),
        )],
    );
    assert!(t.contains("rediss://:***@127.0.0.1:notaport/0"), "{t}");
    outputs.push(t);

    for out in &outputs {
        assert!(
            !out.contains(PASSWORD) && !out.contains(WRONG),
            "a password leaked:\n{out}"
        );
    }
}

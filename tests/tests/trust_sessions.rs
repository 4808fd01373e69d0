//! Authenticated sessions join the never-block set, and only while they last: the real daemon following
//! a real sshd's log, with its API on the lab link.
//!
//! - An SSH login accepted in the log protects its peer while the connection is established; a SYN
//!   flood from that peer is refused, not blocked. Once the session ends, the same flood is blocked,
//!   with the full response (the peer completed a handshake).
//! - A brute-forcer's failed logins never protect it: hydra is blocked at its 5th failure.
//! - An API client that presented a valid token is protected; one that presented a bad token is not.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netguard_tests::daemon::Daemon;
use netguard_tests::netns::{
    ATTACKER_V4, NetnsPair, SENSOR_V4, require_root, require_tool, run_in, run_in_timeout,
};
use netguard_tests::sshd::{Hydra, LabSshd, PORT, TestUser, word_file};
use serde_json::Value;

const TOKEN: &str = "sessions-test-admin-token-0123456789";
const VIEWER: &str = "sessions-test-viewer-token-0123456789";

/// `ssh -N` with a password from SSH_ASKPASS (no sshpass needed): the session stays open, running
/// nothing (the test user's shell is nologin), until it is killed on drop.
struct SshSession(Child);

impl SshSession {
    fn open(ns: &str, dir: &Path, user: &TestUser) -> SshSession {
        let askpass = dir.join("askpass.sh");
        std::fs::write(&askpass, format!("#!/bin/sh\necho '{}'\n", user.password)).unwrap();
        std::fs::set_permissions(
            &askpass,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "-k", "2", "90", "ssh", "-N"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "NumberOfPasswordPrompts=1",
            ])
            .args(["-b", &ATTACKER_V4[0].to_string(), "-p", &PORT.to_string()])
            .arg(format!("{}@{SENSOR_V4}", user.name))
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh starts");
        SshSession(child)
    }
}

impl Drop for SshSession {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child (`timeout`, which passes SIGTERM on to ssh).
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn never_block_origin(d: &Daemon, ip: &str) -> Option<String> {
    let cidr = format!("{ip}/32");
    d.get_json("/api/v1/never-block")["entries"]
        .as_array()?
        .iter()
        .find(|e| e["cidr"] == cidr.as_str())
        .and_then(|e| e["origin"].as_str().map(str::to_owned))
}

fn wait_until(
    within: Duration,
    what: &str,
    mut ok: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < within,
            "{what} not within {within:?}: {}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn syn_flood(lab: &NetnsPair, from: &str) {
    let target = SENSOR_V4.to_string();
    let out = run_in_timeout(
        &lab.attacker,
        Duration::from_secs(15),
        &[
            "hping3", "-q", "-S", "-p", "80", "-a", from, "-c", "6000", "-i", "u250", &target,
        ],
    );
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
}

fn alerts(d: &Daemon, src: &str, class: &str) -> Vec<Value> {
    d.get_json(&format!("/api/v1/alerts?src={src}&class={class}&limit=100"))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn enforced_block(d: &Daemon, ip: &str) -> Option<Value> {
    let cidr = format!("{ip}/32");
    d.get_json("/api/v1/blocklist?limit=1000")
        .as_array()?
        .iter()
        .find(|e| e["cidr"] == cidr.as_str() && e["enforced"] == true)
        .cloned()
}

#[test]
fn authenticated_sessions_are_protected_while_they_last() {
    if !require_root() || !require_tool("hping3") || !require_tool("hydra") || !require_tool("ssh")
    {
        return;
    }
    let lab = NetnsPair::new("sessions");
    let user = TestUser::create("ngtsess");
    let state = tempfile::tempdir().unwrap();
    let sshd_log = state.path().join("sshd.log");
    let _sshd = LabSshd::start(&lab, &user.name, 6, &sshd_log);
    let cfg = state.path().join("netguard.toml");
    std::fs::write(
        &cfg,
        format!("[trust]\nrefresh = \"500ms\"\n[[api.tokens]]\nname = \"ops-viewer\"\nrole = \"viewer\"\ntoken = \"{VIEWER}\"\n"),
    )
    .unwrap();
    let api = format!("{SENSOR_V4}:9743");
    let log = sshd_log.to_string_lossy().into_owned();
    let cfg = cfg.to_string_lossy().into_owned();
    let d = Daemon::start(
        &lab,
        state.path(),
        &api,
        TOKEN,
        &[
            "--auth-log",
            &log,
            "--auth-log-format",
            "sshd-e",
            "--config",
            &cfg,
        ],
    );

    // An accepted SSH login protects its peer while the connection lasts.
    let peer = ATTACKER_V4[0].to_string();
    let session = SshSession::open(&lab.attacker, state.path(), &user);
    wait_until(
        Duration::from_secs(20),
        "the SSH session in the never-block set",
        || never_block_origin(&d, &peer).as_deref() == Some("ssh_session"),
        || {
            format!(
                "{}\nsshd: {}",
                d.get("/api/v1/never-block"),
                std::fs::read_to_string(&sshd_log).unwrap_or_default()
            )
        },
    );
    syn_flood(&lab, &peer);
    wait_until(
        Duration::from_secs(8),
        "a refused syn_flood alert for the SSH peer",
        || {
            alerts(&d, &peer, "syn_flood")
                .iter()
                .any(|a| a["action"] == "refused")
        },
        || d.log_text(),
    );
    let refused = alerts(&d, &peer, "syn_flood")
        .into_iter()
        .find(|a| a["action"] == "refused")
        .unwrap();
    assert_eq!(
        refused["evidence"]["never_block_origin"], "ssh_session",
        "{refused}"
    );
    assert!(enforced_block(&d, &peer).is_none());

    // The session ends: the protection ends with it, and the peer's flood is blocked in full (it
    // completed a handshake with this host).
    drop(session);
    wait_until(
        Duration::from_secs(20),
        "the ended session leaving the set",
        || never_block_origin(&d, &peer).is_none(),
        || d.get("/api/v1/never-block"),
    );
    // A new cooldown window: the first alert was a refusal, so a block may follow at once.
    syn_flood(&lab, &peer);
    wait_until(
        Duration::from_secs(8),
        "the block of the former SSH peer",
        || enforced_block(&d, &peer).is_some(),
        || format!("{:?}\n{}", alerts(&d, &peer, "syn_flood"), d.log_text()),
    );
    let blocked = alerts(&d, &peer, "syn_flood")
        .into_iter()
        .find(|a| a["action"] == "blocked")
        .expect("a blocked alert");
    assert_eq!(blocked["evidence"]["response"], "full", "{blocked}");
    assert_eq!(blocked["evidence"]["handshake"], true, "{blocked}");

    // A brute-forcer's unauthenticated connections are no session: blocked at the 5th failure.
    let brute = ATTACKER_V4[1].to_string();
    let words: Vec<String> = (0..12).map(|i| format!("wrong-{i}")).collect();
    let words = word_file(state.path(), "words.txt", &words);
    // hydra cannot bind: the attacker's route to the sensor's /24 picks its source address.
    let out = run_in(
        &lab.attacker,
        &[
            "ip",
            "route",
            "replace",
            "10.213.1.0/24",
            "dev",
            netguard_tests::netns::ATTACKER_IF,
            "src",
            &brute,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let hydra = Hydra::start(
        &lab.attacker,
        state.path(),
        &words.to_string_lossy(),
        &user.name,
        false,
    )
    .expect("hydra starts");
    wait_until(
        Duration::from_secs(30),
        "hydra's block",
        || enforced_block(&d, &brute).is_some(),
        || {
            format!(
                "{}\nsshd: {}",
                d.log_text(),
                std::fs::read_to_string(&sshd_log).unwrap_or_default()
            )
        },
    );
    drop(hydra);
    assert!(
        never_block_origin(&d, &brute).is_none(),
        "failed logins never protect their source"
    );

    // API clients: a bad token protects nothing, a valid one protects its address.
    let client = ATTACKER_V4[2].to_string();
    let url = format!("http://{api}/api/v1/alerts?limit=1");
    let curl = |token: &str| {
        let auth = format!("Authorization: Bearer {token}");
        let out = run_in(
            &lab.attacker,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "5",
                "--interface",
                &client,
                "-H",
                &auth,
                &url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl("not-a-token"), "401");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        never_block_origin(&d, &client).is_none(),
        "a rejected token protects nothing"
    );
    assert_eq!(curl(VIEWER), "200");
    assert_eq!(
        never_block_origin(&d, &client).as_deref(),
        Some("api_client")
    );
    syn_flood(&lab, &client);
    wait_until(
        Duration::from_secs(8),
        "a refused alert for the API client",
        || {
            alerts(&d, &client, "syn_flood")
                .iter()
                .any(|a| a["action"] == "refused")
        },
        || d.log_text(),
    );
    assert!(enforced_block(&d, &client).is_none());
}

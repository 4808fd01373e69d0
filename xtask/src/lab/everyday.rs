//! Everyday traffic a server sees, as benign scenario steps: downloads from it (the sensor sees only
//! the client's ACKs), uploads, scp copies, long-lived connections that go quiet and resume, HTTP
//! with and without keep-alive and browser-like parallel fetches, API polling, voice (RTP-like UDP),
//! QUIC-like bursts, DNS and NTP clients, monitoring, and ssh sessions and logins. Each family runs at
//! several rates at once from different client addresses (the data is per source address), and
//! some run one after another from one address, inside one detector window (a bulk transfer, then
//! small requests), since that is where a model trained on one shape at a time goes wrong.
//!
//! Every step is a shell loop that ends on its own after its seconds (`for_secs`), every client in it
//! has its own time bound (curl --max-time, `timeout`, the scripts' SECS), and the step as a whole
//! runs under the step's `timeout`.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::addrs::{BEN_A, BEN_B, Host, SENSOR_V4};
use super::scenarios::Step;
use super::services::{APP_PORT, ECHO_PORT, Files, HTTP_PORT, IPERF_PORTS, LAB_USER};

/// The loop runs `body` again until `secs` have passed since it started. It exits 0: a client
/// stopped by its own time bound in the last round is not the step reaching its bound.
fn for_secs(secs: u32, body: &str) -> String {
    format!("end=$(($(date +%s)+{secs})); while [ $(date +%s) -lt $end ]; do {body}; done; true")
}

fn step(host: &'static Host, src: Ipv4Addr, secs: u32, script: String) -> Step {
    Step {
        host,
        src: src.into(),
        argv: vec!["sh".into(), "-c".into(), script],
        // The loop ends by itself after `secs`; a client started in its last second may run its own
        // bound (at most 10 s) on top.
        limit: Duration::from_secs(u64::from(secs) + 15),
        ok: None,
    }
}

/// `a(i)`/`b(i)`: the i-th IPv4 address of ben-a/ben-b.
fn a(i: usize) -> Ipv4Addr {
    BEN_A.v4[i]
}
fn b(i: usize) -> Ipv4Addr {
    BEN_B.v4[i]
}

fn curl(src: Ipv4Addr, opts: &str, path: &str) -> String {
    format!("curl -s -o /dev/null --interface {src} {opts} http://{SENSOR_V4}:{APP_PORT}/{path}")
}

/// A download of the big file, `rate` as curl's --limit-rate ("0": unlimited), `max` seconds at most.
fn download(src: Ipv4Addr, rate: &str, max: u32) -> String {
    curl(
        src,
        &format!("--limit-rate {rate} --max-time {max}"),
        "big.bin",
    )
}

/// An upload (PUT) of the big file's first bytes, as `download`.
fn upload(files: &Files, src: Ipv4Addr, rate: &str, max: u32) -> String {
    let opts = format!(
        "--limit-rate {rate} --max-time {max} -T {}",
        files.big.display()
    );
    curl(src, &opts, "upload")
}

/// `n` small requests one after another, each on a new connection (no keep-alive).
fn requests(src: Ipv4Addr, n: u32, path: &str) -> String {
    format!(
        "for i in $(seq {n}); do {}; done",
        curl(src, "--max-time 3", path)
    )
}

const SSH_OPTS: &str = "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o ConnectTimeout=3 -o LogLevel=ERROR";

fn ssh(files: &Files, src: Ipv4Addr, remote: &str) -> String {
    format!(
        "ssh {SSH_OPTS} -i {} -b {src} {LAB_USER}@{SENSOR_V4} '{remote}'",
        files.client_key.display()
    )
}

/// scp in the classic protocol (-O), so /dev/null works as either end; `kbit` 0 is unlimited.
fn scp(files: &Files, src: Ipv4Addr, kbit: u32, from: &str, to: &str) -> String {
    let limit = if kbit > 0 {
        format!("-l {kbit} ")
    } else {
        String::new()
    };
    format!(
        "timeout -k 2 10 scp -O -q {SSH_OPTS} -o BindAddress={src} -i {} {limit}{from} {to}",
        files.client_key.display()
    )
}

fn py(files: &Files, script: &std::path::Path, args: String) -> String {
    format!("{} {} {args}", files.python, script.display())
}

fn udp(files: &Files, src: Ipv4Addr, port: u16, mode: &str, secs: u32, args: &str) -> String {
    py(
        files,
        &files.udp_send,
        format!("{src} {SENSOR_V4} {port} {mode} {secs} {args}"),
    )
}

/// Downloads from the sensor's app server at 200 KB/s, 1, 10 and 50 MB/s, `secs` long each.
pub fn download_limited(secs: u32) -> Vec<Step> {
    let max = secs.min(60);
    vec![
        step(
            &BEN_A,
            a(0),
            secs,
            for_secs(secs, &download(a(0), "200k", max)),
        ),
        step(
            &BEN_A,
            a(1),
            secs,
            for_secs(secs, &download(a(1), "1M", max)),
        ),
        step(
            &BEN_B,
            b(0),
            secs,
            for_secs(secs, &download(b(0), "10M", max)),
        ),
        step(
            &BEN_B,
            b(1),
            secs,
            for_secs(secs, &download(b(1), "50M", max)),
        ),
    ]
}

/// Unlimited downloads (as fast as two cores serve them), one client, then two at once.
pub fn download_unlimited(secs: u32) -> Vec<Step> {
    vec![
        step(&BEN_A, a(0), secs, for_secs(secs, &download(a(0), "0", 5))),
        step(
            &BEN_B,
            b(0),
            secs,
            format!(
                "sleep {}; {}",
                secs / 2,
                for_secs(secs / 2, &download(b(0), "0", 5))
            ),
        ),
    ]
}

/// Uploads (HTTP PUT of a large body) at 1 and 10 MB/s and unlimited.
pub fn upload_rates(files: &Files, secs: u32) -> Vec<Step> {
    vec![
        step(
            &BEN_A,
            a(0),
            secs,
            for_secs(secs, &upload(files, a(0), "1M", secs)),
        ),
        step(
            &BEN_A,
            a(1),
            secs,
            for_secs(secs, &upload(files, a(1), "10M", secs)),
        ),
        step(
            &BEN_B,
            b(0),
            secs,
            for_secs(secs, &upload(files, b(0), "0", 4)),
        ),
    ]
}

/// One address does a bulk transfer and then a few dozen small requests, inside one 10 s window:
/// an upload then 30 requests (the shape an earlier model blocked as a UDP flood), a download then
/// 40, a rate-limited download then browser-like parallel fetches.
pub fn bulk_then_requests(files: &Files, secs: u32) -> Vec<Step> {
    let up = format!(
        "{}; {}; sleep 2",
        upload(files, a(0), "0", 3),
        requests(a(0), 30, "api.json")
    );
    let down = format!(
        "{}; {}; sleep 2",
        download(b(0), "0", 3),
        requests(b(0), 40, "index.html")
    );
    let paced = format!(
        "{}; {}; sleep 1",
        download(a(1), "5M", 4),
        parallel(a(1), 16, "index.html")
    );
    vec![
        step(&BEN_A, a(0), secs, for_secs(secs, &up)),
        step(&BEN_B, b(0), secs, for_secs(secs, &down)),
        step(&BEN_A, a(1), secs, for_secs(secs, &paced)),
    ]
}

/// Large copies over ssh: scp downloads at 20 Mbit/s and unlimited, scp uploads at 8 Mbit/s and
/// unlimited, and a stream of zeros through `ssh cat`.
pub fn ssh_copy(files: &Files, secs: u32) -> Vec<Step> {
    let remote = format!("{LAB_USER}@{SENSOR_V4}:{}", files.big.display());
    let big = files.big.display().to_string();
    let sink = format!("{LAB_USER}@{SENSOR_V4}:/dev/null");
    vec![
        step(
            &BEN_A,
            a(0),
            secs,
            for_secs(secs, &scp(files, a(0), 20_000, &remote, "/dev/null")),
        ),
        step(
            &BEN_A,
            a(1),
            secs,
            for_secs(secs, &scp(files, a(1), 0, &remote, "/dev/null")),
        ),
        step(
            &BEN_B,
            b(0),
            secs,
            for_secs(secs, &scp(files, b(0), 8_000, &big, &sink)),
        ),
        step(
            &BEN_B,
            b(1),
            secs,
            for_secs(secs, &scp(files, b(1), 0, &big, &sink)),
        ),
        step(
            &BEN_B,
            b(2),
            secs,
            for_secs(
                secs,
                &format!(
                    "head -c 200000000 /dev/zero | timeout 10 {}",
                    ssh(files, b(2), "cat > /dev/null")
                ),
            ),
        ),
    ]
}

/// Long-lived connections that go quiet for longer than the detector's 10 s window and resume: an
/// ssh session that sends a few MB every 12 s, a keep-alive HTTP connection with a burst of 20
/// requests every 13 s, and a rate-limited download every 14 s.
pub fn long_lived(files: &Files, secs: u32) -> Vec<Step> {
    let chunks = (secs / 12).max(1);
    let session = format!(
        "(for i in $(seq {chunks}); do head -c 3000000 /dev/zero; sleep 12; done) | {}",
        ssh(files, a(0), "cat > /dev/null")
    );
    let http = py(
        files,
        &files.http_client,
        format!("{} {SENSOR_V4} {APP_PORT} {secs} 20 13 /api.json", b(0)),
    );
    let resume = format!("{}; sleep 10", download(a(1), "2M", 4));
    vec![
        step(&BEN_A, a(0), secs, session),
        step(&BEN_B, b(0), secs, http),
        step(&BEN_A, a(1), secs, for_secs(secs, &resume)),
    ]
}

/// Sequential HTTP: a new connection per request at ~5/s and as fast as it goes, and keep-alive
/// clients at 20 and 100 requests/s.
pub fn http_sequential(secs: u32) -> Vec<Step> {
    let paced = format!("{}; sleep 0.2", curl(a(0), "--max-time 3", "index.html"));
    let fast = curl(a(1), "--max-time 3", "index.html");
    let keep = |src: Ipv4Addr, rate: u32| {
        let urls: Vec<String> = (0..rate * secs)
            .map(|_| format!("-o /dev/null http://{SENSOR_V4}:{APP_PORT}/api.json"))
            .collect();
        // --max-time bounds each request, not the list: `timeout` bounds the whole client.
        format!(
            "timeout {secs} curl -s --interface {src} --max-time 3 --rate {rate}/s {}; true",
            urls.join(" ")
        )
    };
    vec![
        step(&BEN_A, a(0), secs, for_secs(secs, &paced)),
        step(&BEN_A, a(1), secs, for_secs(secs, &fast)),
        step(&BEN_B, b(0), secs, keep(b(0), 20)),
        step(&BEN_B, b(1), secs, keep(b(1), 100)),
    ]
}

/// `n` fetches at once, each on its own connection, as a browser loads a page's resources.
fn parallel(src: Ipv4Addr, n: u32, path: &str) -> String {
    let urls: Vec<String> = (0..n)
        .map(|_| format!("-o /dev/null http://{SENSOR_V4}:{APP_PORT}/{path}"))
        .collect();
    format!(
        "curl -s --interface {src} --max-time 5 --parallel --parallel-immediate --parallel-max 16 {}",
        urls.join(" ")
    )
}

/// Browser-like page loads: 16 parallel fetches every 2 s, 20 at once via xargs -P every 3 s, and a
/// page with its 256 KiB image among 12 resources every 2 s.
pub fn http_parallel(secs: u32) -> Vec<Step> {
    let page = format!("{}; sleep 2", parallel(a(0), 16, "index.html"));
    let xargs = format!(
        "seq 20 | xargs -P 20 -I{{}} {}; sleep 3",
        curl(a(1), "--max-time 5", "api.json?{}")
    );
    let mixed = format!(
        "{}; {}; sleep 2",
        parallel(b(0), 11, "index.html"),
        curl(b(0), "--max-time 5", "blob.bin")
    );
    vec![
        step(&BEN_A, a(0), secs, for_secs(secs, &page)),
        step(&BEN_A, a(1), secs, for_secs(secs, &xargs)),
        step(&BEN_B, b(0), secs, for_secs(secs, &mixed)),
    ]
}

/// API clients: polling every second on a new connection, every 0.5 s on a kept-alive one, and a
/// small JSON POST every 2 s.
pub fn api_polling(files: &Files, secs: u32) -> Vec<Step> {
    let poll = format!("{}; sleep 1", curl(a(0), "--max-time 3", "api.json"));
    let keep = py(
        files,
        &files.http_client,
        format!("{} {SENSOR_V4} {APP_PORT} {secs} 1 0.5 /api.json", b(0)),
    );
    let post = format!(
        "{}; sleep 2",
        curl(
            b(1),
            "--max-time 3 -H 'Content-Type: application/json' -d '{\"event\":\"ping\",\"n\":1}'",
            "events"
        )
    );
    vec![
        step(&BEN_A, a(0), secs, for_secs(secs, &poll)),
        step(&BEN_B, b(0), secs, keep),
        step(&BEN_B, b(1), secs, for_secs(secs, &post)),
    ]
}

/// Monitoring: ping once a second and five times a second, a fast ping (20/s), metric scrapes every
/// 5 s and health checks of every service (ssh banner, HTTP, iperf3 ports, UDP echo) every 5 s.
pub fn monitoring(files: &Files, secs: u32) -> Vec<Step> {
    let ping = |src: Ipv4Addr, gap: &str| {
        let n = (f64::from(secs) / gap.parse::<f64>().unwrap_or(1.0)) as u32;
        format!("ping -n -q -c {n} -i {gap} -W 1 -I {src} {SENSOR_V4}")
    };
    let scrape = format!(
        "{}; {}; sleep 5",
        curl(a(2), "--max-time 3", "metrics"),
        curl(a(2), "--max-time 3", "health")
    );
    let ports: Vec<String> = [22, HTTP_PORT, APP_PORT, IPERF_PORTS[0], IPERF_PORTS[1]]
        .iter()
        .map(u16::to_string)
        .collect();
    let echo = format!(
        "{} {} {} {SENSOR_V4} {ECHO_PORT} 1; sleep 5",
        files.python,
        files.udp_client.display(),
        b(0)
    );
    let checks = format!(
        "{} & {}; wait",
        py(
            files,
            &files.probe,
            format!("{} {SENSOR_V4} {secs} 5 {}", b(0), ports.join(" "))
        ),
        for_secs(secs, &echo)
    );
    vec![
        step(&BEN_A, a(0), secs, ping(a(0), "1")),
        step(&BEN_A, a(1), secs, ping(a(1), "0.2")),
        step(&BEN_B, b(1), secs, ping(b(1), "0.05")),
        step(&BEN_A, a(2), secs, for_secs(secs, &scrape)),
        step(&BEN_B, b(0), secs, checks),
    ]
}

/// Voice: one call (50 packets/s of 172 bytes), four and sixteen (800/s) from one address.
pub fn voice(files: &Files, secs: u32) -> Vec<Step> {
    vec![
        step(
            &BEN_A,
            a(0),
            secs,
            udp(files, a(0), 16384, "rtp", secs, "1"),
        ),
        step(
            &BEN_A,
            a(1),
            secs,
            udp(files, a(1), 16400, "rtp", secs, "4"),
        ),
        step(
            &BEN_B,
            b(0),
            secs,
            udp(files, b(0), 20000, "rtp", secs, "16"),
        ),
    ]
}

/// QUIC-like bursts of 1200-byte datagrams to 443/udp: one page load a second of 20 datagrams, and
/// four a second of 60.
pub fn quic(files: &Files, secs: u32) -> Vec<Step> {
    vec![
        step(
            &BEN_A,
            a(0),
            secs,
            udp(files, a(0), 443, "quic", secs, "1 20"),
        ),
        step(
            &BEN_B,
            b(0),
            secs,
            udp(files, b(0), 443, "quic", secs, "4 60"),
        ),
    ]
}

/// DNS clients at 5, 50 and 200 queries/s (a busy forwarder), NTP at one request every 2 s, each
/// query from a new source port.
pub fn dns_ntp(files: &Files, secs: u32) -> Vec<Step> {
    vec![
        step(
            &BEN_A,
            a(0),
            secs,
            udp(files, a(0), 53, "query", secs, "5 40"),
        ),
        step(
            &BEN_A,
            a(1),
            secs,
            udp(files, a(1), 53, "query", secs, "50 45"),
        ),
        step(
            &BEN_B,
            b(0),
            secs,
            udp(files, b(0), 53, "query", secs, "200 60"),
        ),
        step(
            &BEN_B,
            b(1),
            secs,
            udp(files, b(1), 123, "query", secs, "0.5 48"),
        ),
    ]
}

/// ssh in everyday use: an interactive session (a command every 0.3 s), successful key logins every
/// 2 s and every second (deploy scripts), and a session that keeps a tunnel busy with small writes.
pub fn ssh_sessions(files: &Files, secs: u32) -> Vec<Step> {
    let lines = secs * 10 / 3;
    let interactive = format!(
        "(for i in $(seq {lines}); do echo 'date; ls / | wc -l'; sleep 0.3; done) | {}",
        ssh(files, a(0), "sh")
    );
    let login =
        |src: Ipv4Addr, gap: &str| format!("{}; sleep {gap}", ssh(files, src, "id; uptime"));
    let trickle = format!(
        "(for i in $(seq {}); do head -c 2000 /dev/zero; sleep 0.1; done) | {}",
        secs * 10,
        ssh(files, b(1), "cat > /dev/null")
    );
    vec![
        step(&BEN_A, a(0), secs, interactive),
        step(&BEN_A, a(1), secs, for_secs(secs, &login(a(1), "2"))),
        step(&BEN_B, b(0), secs, for_secs(secs, &login(b(0), "1"))),
        step(&BEN_B, b(1), secs, trickle),
    ]
}

/// The everyday background that runs alongside some attacks instead of the office mix: a 5 MB/s
/// download, page loads, an interactive ssh session, two voice calls, DNS and NTP, QUIC-like page
/// loads and API polling, each from its own address. Bounded by `MIX_SECS`; stopped when the
/// scenario's window ends.
pub fn background(files: &Files) -> Vec<Step> {
    let s = MIX_SECS;
    let lines = s * 2;
    let interactive = format!(
        "(for i in $(seq {lines}); do echo date; sleep 0.5; done) | {}",
        ssh(files, a(2), "sh")
    );
    vec![
        step(&BEN_A, a(0), s, for_secs(s, &download(a(0), "5M", 20))),
        step(
            &BEN_A,
            a(1),
            s,
            for_secs(s, &format!("{}; sleep 3", parallel(a(1), 16, "index.html"))),
        ),
        step(&BEN_A, a(2), s, interactive),
        step(&BEN_B, b(0), s, udp(files, b(0), 16384, "rtp", s, "2")),
        step(&BEN_B, b(1), s, udp(files, b(1), 53, "query", s, "20 45")),
        step(
            &BEN_B,
            b(2),
            s,
            format!(
                "{} & {}; wait",
                udp(files, b(2), 443, "quic", s, "1 20"),
                for_secs(
                    s,
                    &format!("{}; sleep 1", curl(b(2), "--max-time 3", "api.json"))
                )
            ),
        ),
    ]
}

/// Upper bound of the everyday background (it is normally stopped long before, at the window's end).
const MIX_SECS: u32 = 120;

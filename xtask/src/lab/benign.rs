//! Benign traffic from the benign client namespaces: the background mix that runs alongside attacks,
//! and the steps of the benign-only scenarios. Real clients against the real services: ping, curl,
//! ssh logins with the lab key, the UDP echo client, iperf3.
//!
//! Each activity is a shell loop whose every command has its own short timeout (-W, --max-time,
//! ConnectTimeout, -t), so one stalled client cannot hold the loop; the loop as a whole runs under
//! `timeout` and is stopped, with its whole process group, when the scenario's window ends.

use std::net::IpAddr;
use std::time::Duration;

use super::addrs::{BEN_A, BEN_B, Host, SENSOR_V4, SENSOR_V6};
use super::scenarios::Step;
use super::services::{ECHO_PORT, Files, HTTP_PORT, IPERF_PORTS, LAB_USER};

/// Upper bound for a background loop; it is normally stopped long before, when the attack ends.
const MIX_LIMIT: Duration = Duration::from_secs(300);

fn ssh(
    files: &Files,
    src: impl std::fmt::Display,
    dst: impl std::fmt::Display,
    remote: &str,
) -> String {
    format!(
        "ssh -F /dev/null -i {} -b {src} -o BatchMode=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o ConnectTimeout=3 -o LogLevel=ERROR {LAB_USER}@{dst} '{remote}'",
        files.client_key.display()
    )
}

fn sh(host: &'static Host, src: IpAddr, limit: Duration, script: String) -> Step {
    Step {
        host,
        src,
        argv: vec!["sh".into(), "-c".into(), script],
        limit,
        // A loop's status is that of its last client, which may be a lost ping: not a lab failure.
        ok: None,
    }
}

/// The background mix of one benign host, using all of its addresses in turn: a few pings, an HTTP
/// page and download, an ssh login that runs a command, UDP echo, every third round a one-second
/// iperf3, and IPv6 ping/HTTP. Pauses between rounds keep it at a realistic office-host pace.
pub fn mix(host: &'static Host, files: &Files) -> Step {
    let iperf = if std::ptr::eq(host, &BEN_A) {
        IPERF_PORTS[0]
    } else {
        IPERF_PORTS[1]
    };
    let a = |i: usize| host.v4[i % host.v4.len()];
    let v6 = host.v6[0];
    let (s4, s6) = (SENSOR_V4, SENSOR_V6);
    let py = &files.python;
    let udp = files.udp_client.display();
    let ssh_cmd = ssh(files, a(2), s4, "uname -a; head -c 50000 /dev/zero | wc -c");
    let script = format!(
        "i=0\nwhile :; do\n i=$((i+1))\n\
         ping -n -q -c 3 -i 0.2 -W 1 -I {a0} {s4}\n\
         curl -s -o /dev/null -o /dev/null --max-time 3 --interface {a1} http://{s4}:{HTTP_PORT}/ http://{s4}:{HTTP_PORT}/blob.bin\n\
         {ssh_cmd}\n\
         {py} {udp} {a0} {s4} {ECHO_PORT} 10\n\
         if [ $((i % 3)) -eq 0 ]; then iperf3 -c {s4} -B {a1} -p {iperf} -t 1 -b 20M >/dev/null; fi\n\
         ping -6 -n -q -c 2 -i 0.2 -W 1 -I {v6} {s6}\n\
         curl -g -s -o /dev/null --max-time 3 --interface {v6} 'http://[{s6}]:{HTTP_PORT}/'\n\
         sleep 1\ndone\n",
        a0 = a(0),
        a1 = a(1),
    );
    sh(host, a(0).into(), MIX_LIMIT, script)
}

/// Both benign hosts' background mixes.
pub fn mixes(files: &Files) -> Vec<Step> {
    vec![mix(&BEN_A, files), mix(&BEN_B, files)]
}

/// Bulk transfers at a ladder of rates, `secs` each: iperf3 UDP at 2-50 Mbit/s from ben-b and TCP
/// capped at 5 Mbit/s up to unlimited from ben-a. A UDP stream at a few thousand datagrams a second
/// from one port is what a flood from a fixed port also looks like in packets per flow; the rates and
/// sizes in between are what tell them apart.
pub fn rates(secs: u32) -> Vec<Step> {
    let s4 = SENSOR_V4;
    let limit = Duration::from_secs(u64::from(secs) * 4 + 20);
    let (a, b) = (BEN_A.v4[2], BEN_B.v4[2]);
    vec![
        sh(
            &BEN_B,
            b.into(),
            limit,
            format!(
                "for r in 2 8 20 50; do iperf3 -c {s4} -B {b} -p {} -u -b ${{r}}M -l 1200 -t {secs} >/dev/null; done",
                IPERF_PORTS[3]
            ),
        ),
        sh(
            &BEN_A,
            a.into(),
            limit,
            format!(
                "for r in 5M 20M 100M 0; do iperf3 -c {s4} -B {a} -p {} -b $r -t {secs} >/dev/null; done",
                IPERF_PORTS[2]
            ),
        ),
    ]
}

/// Bulk transfers: iperf3 TCP (two streams) from ben-a and UDP at `udp_mbit` from ben-b, each `secs`
/// long, plus a parallel burst of `curls` HTTP requests.
pub fn bulk(secs: u32, udp_mbit: u32, curls: u32) -> Vec<Step> {
    let s4 = SENSOR_V4;
    let limit = Duration::from_secs(u64::from(secs) + 15);
    let a = BEN_A.v4[0];
    let b = BEN_B.v4[0];
    let c = BEN_A.v4[1];
    // curl's -o applies to one URL each, so every URL gets its own.
    let urls: Vec<String> = (0..curls)
        .map(|_| format!("-o /dev/null http://{s4}:{HTTP_PORT}/"))
        .collect();
    vec![
        sh(
            &BEN_A,
            a.into(),
            limit,
            format!("iperf3 -c {s4} -B {a} -p {} -t {secs} -P 2", IPERF_PORTS[2]),
        ),
        sh(
            &BEN_B,
            b.into(),
            limit,
            format!(
                "iperf3 -c {s4} -B {b} -p {} -u -b {udp_mbit}M -t {secs}",
                IPERF_PORTS[3]
            ),
        ),
        sh(
            &BEN_A,
            c.into(),
            limit,
            format!(
                "curl -s --max-time 10 -Z --parallel-max 8 --interface {c} {}",
                urls.join(" ")
            ),
        ),
    ]
}

/// Interactive-ish use: `sessions` ssh logins one second apart from ben-b (each runs a command and
/// uploads 1 MiB), and HTTP request bursts every second from ben-a over IPv4 and IPv6.
pub fn ssh_http(files: &Files, sessions: u32) -> Vec<Step> {
    let s4 = SENSOR_V4;
    let s6 = SENSOR_V6;
    let b = BEN_B.v4[1];
    let a = BEN_A.v4[2];
    let a6 = BEN_A.v6[1];
    let limit = Duration::from_secs(u64::from(sessions) * 6 + 10);
    let login = ssh(files, b, s4, "id; cat > /dev/null");
    let ssh_loop = format!(
        "for i in $(seq {sessions}); do head -c 1048576 /dev/zero | {login}; sleep 1; done"
    );
    let http_loop = format!(
        "for i in $(seq {sessions}); do \
         curl -s -o /dev/null -o /dev/null --max-time 3 --interface {a} http://{s4}:{HTTP_PORT}/ http://{s4}:{HTTP_PORT}/blob.bin; \
         curl -g -s -o /dev/null --max-time 3 --interface {a6} 'http://[{s6}]:{HTTP_PORT}/'; sleep 1; done"
    );
    vec![
        sh(&BEN_B, b.into(), limit, ssh_loop),
        sh(&BEN_A, a.into(), limit, http_loop),
    ]
}

/// A quiet network: one ping a second from every benign address (IPv4 and IPv6) for `secs`.
pub fn quiet(secs: u32) -> Vec<Step> {
    let mut steps = Vec::new();
    let limit = Duration::from_secs(u64::from(secs) + 5);
    for host in [&BEN_A, &BEN_B] {
        for a in host.v4 {
            let script = format!("ping -n -q -c {secs} -i 1 -W 1 -I {a} {SENSOR_V4}");
            steps.push(sh(host, (*a).into(), limit, script));
        }
        for a in host.v6 {
            let script = format!("ping -6 -n -q -c {secs} -i 1 -W 1 -I {a} {SENSOR_V6}");
            steps.push(sh(host, (*a).into(), limit, script));
        }
    }
    steps
}

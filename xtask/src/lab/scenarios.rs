//! The scenarios: which real tools run, from which addresses, with which parameters. Every flood has a
//! packet count (hping3 -c) and runs under `timeout`; every scan has --max-retries and --host-timeout;
//! every brute force has a fixed word list and a time bound; every everyday benign client ends on its
//! own after its seconds. The default plan takes about 30 minutes, `--quick` about 2.5. A scenario's
//! class comes from its name's prefix, so the two cannot disagree.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use super::addrs::{self, ATT_A, ATT_B, Host, NET_ICMP, NET_SCAN, NET_SSH, NET_SYN, NET_UDP};
use super::addrs::{SENSOR_V4, SENSOR_V6};
use super::record::Label;
use super::services::{Files, LAB_USER};
use super::topology::HOST_IF;
use super::{benign, everyday};

/// One tool run inside a lab namespace.
pub struct Step {
    pub host: &'static Host,
    /// The address the step sends from. The namespace's route gets it as preferred source before the
    /// step starts, for tools that cannot bind (hydra, medusa); the others are also told explicitly.
    pub src: IpAddr,
    pub argv: Vec<String>,
    /// Wall-clock bound (`timeout`), above the tool's own count or time limit.
    pub limit: Duration,
    /// Exit codes that mean the tool did its job; None accepts any (shell loops of benign clients).
    pub ok: Option<&'static [i32]>,
}

pub struct Scenario {
    pub name: String,
    pub class: Label,
    /// What it is, then the exact commands: for the progress lines and the manifest.
    pub params: String,
    /// Started together after the warm-up; the labelled window lasts until all of them have ended.
    pub steps: Vec<Step>,
    /// The labelled window lasts at least this long (for scenarios that are only the benign mix).
    pub hold: Duration,
    /// The benign traffic that runs alongside, from the benign hosts.
    pub background: Background,
    /// hping3 --rand-source: unknown sources are this scenario's attack.
    pub spoofed: bool,
    /// Rough traffic time, for the up-front estimate only.
    pub expect: Duration,
}

/// Benign traffic that runs alongside a scenario's own steps, labelled benign by address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Background {
    /// Nothing: only the scenario's own steps send.
    None,
    /// The office mix (`benign::mixes`): ping, HTTP, ssh logins, UDP echo, iperf3 bursts, IPv6.
    Office,
    /// Everyday server traffic (`everyday::background`): a download, page loads, an ssh session,
    /// voice, DNS/NTP, QUIC-like bursts, API polling.
    Everyday,
}

impl Background {
    pub fn steps(self, files: &Files) -> Vec<Step> {
        match self {
            Background::None => Vec::new(),
            Background::Office => benign::mixes(files),
            Background::Everyday => everyday::background(files),
        }
    }

    fn note(self) -> &'static str {
        match self {
            Background::None => "",
            Background::Office => "; benign mix alongside",
            Background::Everyday => "; everyday benign traffic alongside",
        }
    }
}

impl Scenario {
    /// The addresses this scenario's attack tools send from.
    pub fn attackers(&self) -> HashSet<IpAddr> {
        self.steps
            .iter()
            .filter(|s| s.host.role == addrs::Role::Attacker)
            .map(|s| s.src)
            .collect()
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// hping3 exits 1 when no reply came back, which spoofed and closed-port floods expect.
const HPING_OK: &[i32] = &[0, 1];
const ZERO: &[i32] = &[0];

/// A bounded hping3 flood from attacker address `n` of the mode's class: `pps` packets per second for
/// `s` seconds, so exactly pps*s packets. `mode` is hping3's own options, e.g. "-S -p 80".
fn hping(host: &'static Host, n: u8, mode: &str, pps: u32, s: u32) -> Step {
    let net = match mode.split_whitespace().next() {
        Some("-S") => NET_SYN,
        Some("--udp") => NET_UDP,
        _ => NET_ICMP,
    };
    let src = addrs::attacker_v4(net, n);
    let mut v = words(&format!("hping3 -q -I {HOST_IF} {mode}"));
    v.extend(words(&format!(
        "-i u{} -c {} -a {src} {SENSOR_V4}",
        1_000_000 / pps,
        pps * s
    )));
    Step {
        host,
        src: src.into(),
        argv: v,
        // hping3's pacing falls behind at high rates on 2 cores; the time bound then ends it early.
        limit: secs(u64::from(s) * 3 / 2 + 3),
        ok: Some(HPING_OK),
    }
}

/// The same flood from random spoofed sources instead of its own address.
fn spoofed(mut step: Step) -> Step {
    let at = step
        .argv
        .iter()
        .position(|a| a == "-a")
        .expect("hping step");
    step.argv.splice(at..at + 2, ["--rand-source".to_string()]);
    step
}

/// An nmap scan from attacker address `n` (v6 when `six`), retries and total time bounded.
fn nmap(host: &'static Host, n: u8, six: bool, opts: &str, host_timeout: u64) -> Step {
    let src = if six {
        IpAddr::from(addrs::attacker_v6(NET_SCAN, n))
    } else {
        IpAddr::from(addrs::attacker_v4(NET_SCAN, n))
    };
    let mut v = words(&format!(
        "nmap -n -Pn --max-retries 1 --host-timeout {host_timeout}s {opts}"
    ));
    // A connect scan uses the kernel's sockets, which take the route's source; raw scans are told.
    if !opts.contains("-sT") {
        v.extend(words(&format!("-e {HOST_IF} -S {src}")));
    }
    if six {
        v.extend(words(&format!("-6 {SENSOR_V6}")));
    } else {
        v.push(SENSOR_V4.to_string());
    }
    Step {
        host,
        src,
        argv: v,
        limit: secs(host_timeout + 10),
        ok: Some(ZERO),
    }
}

/// The same scan `n` times back to back, as a scanner sweeping again: on a local link one sweep of
/// every port takes under two seconds, too short for the features' one-second ticks.
fn sweeps(mut step: Step, n: u32) -> Step {
    let cmd = step.argv.join(" ");
    step.argv = vec![
        "sh".into(),
        "-c".into(),
        format!("for i in $(seq {n}); do {cmd} || exit $?; done"),
    ];
    step.limit *= n;
    step
}

/// hydra (or medusa, when `opts` starts with "medusa") against the real sshd from attacker address
/// `n`; the word list bounds the attempts, `limit` the time.
fn brute(host: &'static Host, n: u8, six: bool, opts: &str, limit: u64) -> Step {
    let src = if six {
        IpAddr::from(addrs::attacker_v6(NET_SSH, n))
    } else {
        IpAddr::from(addrs::attacker_v4(NET_SSH, n))
    };
    let target = if six {
        format!("[{SENSOR_V6}]")
    } else {
        SENSOR_V4.to_string()
    };
    let argv = if let Some(rest) = opts.strip_prefix("medusa ") {
        words(&format!("medusa -b -h {target} -M ssh -f {rest}"))
    } else {
        // -w 2: after sshd's MaxAuthTries disconnect, hydra otherwise waits its default 32 s for a
        // response before reconnecting, which turns a brute force into a trickle.
        words(&format!("hydra -I -f -w 2 {opts} ssh://{target}"))
    };
    Step {
        host,
        src,
        argv,
        limit: secs(limit),
        // hydra and medusa exit 0 whether or not a password was found; errors are non-zero.
        ok: Some(ZERO),
    }
}

struct Plan<'a> {
    list: Vec<Scenario>,
    files: &'a Files,
}

const MIX: Background = Background::Office;
const ALONE: Background = Background::None;
const EVERYDAY: Background = Background::Everyday;

fn class_of(name: &str) -> Label {
    Label::ALL
        .into_iter()
        .rev() // "benign" last, so no attack name can fall through to it
        .find(|l| name.starts_with(l.as_str()))
        .unwrap_or_else(|| panic!("scenario {name} does not start with a class name"))
}

impl Plan<'_> {
    /// Adds a scenario; `expect` is its rough traffic time in seconds, for the estimate.
    fn add(&mut self, name: &str, note: &str, bg: Background, expect: u64, steps: Vec<Step>) {
        let f = self.files;
        let shorten = |a: &String| {
            // The work dir's long paths say nothing in a manifest; the file names do.
            for p in [
                &f.words_hit,
                &f.words_miss,
                &f.words_short,
                &f.users,
                &f.client_key,
            ] {
                if a == &p.to_string_lossy() {
                    return p
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                }
            }
            a.clone()
        };
        let cmds: Vec<String> = steps
            .iter()
            // Benign clients' shell loops are described by the note; attack steps are shown exactly.
            .filter(|s| s.argv[0] != "sh" || s.host.role == addrs::Role::Attacker)
            .map(|s| s.argv.iter().map(shorten).collect::<Vec<_>>().join(" "))
            .collect();
        let mut params = note.to_string();
        if !steps.is_empty() {
            params.push_str(bg.note());
        }
        if !cmds.is_empty() {
            params.push_str(&format!(": `{}`", cmds.join("` + `")));
        }
        let spoofed = steps
            .iter()
            .any(|s| s.argv.iter().any(|a| a == "--rand-source"));
        self.list.push(Scenario {
            name: name.into(),
            class: class_of(name),
            params,
            steps,
            hold: Duration::ZERO,
            background: bg,
            spoofed,
            expect: secs(expect),
        });
    }

    fn benign_mix(&mut self, name: &str, hold: u64, bg: Background) {
        let what = match bg {
            Background::Everyday => {
                "everyday background only (download, page loads, ssh, voice, DNS/NTP, QUIC, API polling)"
            }
            _ => "background mix only (ping, HTTP, ssh key logins, UDP echo, iperf3, IPv6)",
        };
        let note = format!("{what} for {hold} s");
        self.add(name, &note, bg, hold, Vec::new());
        self.list.last_mut().expect("just added").hold = secs(hold);
    }
}

/// The scenarios of one run, in order. `files` gives the key, word lists and scripts they use.
// One scenario per line reads as the table it is; rustfmt would spread each over ten lines.
#[rustfmt::skip]
pub fn plan(quick: bool, files: &Files) -> Vec<Scenario> {
    let mut p = Plan { list: Vec::new(), files };
    let hit = files.words_hit.to_string_lossy().into_owned();
    let miss = files.words_miss.to_string_lossy().into_owned();
    let short = files.words_short.to_string_lossy().into_owned();
    let users = files.users.to_string_lossy().into_owned();
    let (a, b) = (&ATT_A, &ATT_B);
    if quick {
        p.benign_mix("benign_mix", 20, MIX);
        p.add("syn_flood_80", "one source", MIX, 8, vec![hping(a, 1, "-S -p 80", 1000, 8)]);
        p.add("syn_flood_spoofed", "random sources", MIX, 6, vec![spoofed(hping(b, 3, "-S -p 80", 1000, 6))]);
        p.add("udp_flood_echo", "one source", MIX, 8, vec![hping(a, 1, "--udp -p 7 -d 512", 1000, 8)]);
        p.add("icmp_flood", "one source", MIX, 8, vec![hping(a, 1, "--icmp -d 56", 1000, 8)]);
        let scan = "-sS -T4 --top-ports 1000 --max-rate 200";
        p.add("port_scan_syn_paced", "SYN scan, 200 probes/s", MIX, 6, vec![nmap(a, 1, false, scan, 30)]);
        let fast = sweeps(nmap(b, 3, false, "-sS -T4 -p-", 30), 3);
        p.add("port_scan_syn_t4", "fast SYN scan of every port, 3 sweeps", MIX, 6, vec![fast]);
        let o = format!("-l {LAB_USER} -P {hit} -t 2");
        p.add("ssh_brute_force_hydra", "40 passwords, the last one right", MIX, 10, vec![brute(a, 1, false, &o, 60)]);
        return p.list;
    }

    p.benign_mix("benign_mix", 60, MIX);
    p.add("benign_bulk", "iperf3 TCP/UDP and a curl burst", MIX, 12, benign::bulk(10, 30, 100));
    p.add("benign_ssh_http", "15 ssh logins with 1 MiB upload; HTTP bursts", MIX, 25, benign::ssh_http(files, 15));
    p.add("benign_rates", "iperf3 UDP at 2-50 Mbit/s and TCP at 5 Mbit/s-unlimited, 6 s per rate", MIX, 24, benign::rates(6));
    p.add("benign_quiet", "1 ping/s from every benign address, v4 and v6, 20 s", ALONE, 20, benign::quiet(20));

    p.add("syn_flood_80_1k", "one source", MIX, 15, vec![hping(a, 1, "-S -p 80", 1000, 15)]);
    p.add("syn_flood_22_5k", "one source, high rate", MIX, 9, vec![hping(b, 3, "-S -p 22", 5000, 8)]);
    p.add("syn_flood_spoofed_2k", "random sources", MIX, 10, vec![spoofed(hping(a, 2, "-S -p 80", 2000, 10))]);
    let (s1, s2) = (hping(a, 2, "-S -p 443", 500, 12), hping(b, 4, "-S -p 443", 500, 12));
    p.add("syn_flood_distributed_443", "two sources, closed port", ALONE, 12, vec![s1, s2]);
    p.add("syn_flood_low_rate", "one source, 50 pps, closed port", MIX, 20, vec![hping(a, 1, "-S -p 8080", 50, 20)]);

    p.add("udp_flood_echo_1k", "one source, to the echo service", MIX, 12, vec![hping(a, 1, "--udp -p 7 -d 512", 1000, 12)]);
    p.add("udp_flood_low_rate", "one source, 100 pps", MIX, 15, vec![hping(b, 4, "--udp -p 7 -d 256", 100, 15)]);
    let spoof_udp = spoofed(hping(b, 3, "--udp -p 53 -d 64", 3000, 10));
    p.add("udp_flood_spoofed_3k", "random sources, closed port", MIX, 10, vec![spoof_udp]);
    let large = "--udp -p 9999 -d 1200";
    let (u1, u2) = (hping(a, 2, large, 500, 10), hping(b, 4, large, 500, 10));
    p.add("udp_flood_large_distributed", "two sources, large datagrams", ALONE, 10, vec![u1, u2]);

    p.add("icmp_flood_1k", "one source", MIX, 12, vec![hping(a, 1, "--icmp -d 56", 1000, 12)]);
    p.add("icmp_flood_moderate", "one source, 200 pps", MIX, 15, vec![hping(b, 4, "--icmp -d 56", 200, 15)]);
    p.add("icmp_flood_spoofed_2k", "random sources", MIX, 10, vec![spoofed(hping(b, 3, "--icmp -d 56", 2000, 10))]);
    let (i1, i2) = (hping(a, 2, "--icmp -d 1400", 500, 10), hping(b, 4, "--icmp -d 1400", 500, 10));
    p.add("icmp_flood_large_distributed", "two sources, large echo requests", ALONE, 10, vec![i1, i2]);

    let fast = sweeps(nmap(a, 1, false, "-sS -T4 -p-", 30), 4);
    p.add("port_scan_syn_t4", "fast SYN scan of every port, 4 sweeps", MIX, 8, vec![fast]);
    let connect = sweeps(nmap(b, 3, false, "-sT -T3 -p-", 30), 4);
    p.add("port_scan_connect_t3", "connect scan of every port, 4 sweeps", MIX, 8, vec![connect]);
    let paced = "-sS -T3 -p 1-6000 --max-rate 150";
    p.add("port_scan_syn_paced", "SYN scan at 150 probes/s", MIX, 40, vec![nmap(a, 2, false, paced, 60)]);
    let (d1, d2) = ("-sT -T3 -p 1-3000 --max-rate 100", "-sS -T3 -p 3001-6000 --max-rate 100");
    let (n1, n2) = (nmap(a, 1, false, d1, 45), nmap(b, 3, false, d2, 45));
    p.add("port_scan_distributed_paced", "two sources split the ports, 100 probes/s each", MIX, 30, vec![n1, n2]);
    let udp = "-sU -T4 --top-ports 200";
    p.add("port_scan_udp_t4", "UDP scan of the 200 most common ports", MIX, 10, vec![nmap(a, 2, false, udp, 40)]);
    let slow = "-sS -T2 --top-ports 100";
    p.add("port_scan_slow_t2", "polite timing, 0.4 s between probes", MIX, 42, vec![nmap(b, 4, false, slow, 60)]);
    let six = sweeps(nmap(a, 1, true, "-sS -T3 -p-", 30), 3);
    p.add("port_scan_v6_t3", "SYN scan of every port over IPv6, 3 sweeps", MIX, 6, vec![six]);

    let o = format!("-l {LAB_USER} -P {hit} -t 4");
    p.add("ssh_brute_force_hydra", "300 passwords, the last one right", MIX, 40, vec![brute(a, 1, false, &o, 90)]);
    let o = format!("medusa -u {LAB_USER} -P {miss} -t 1");
    p.add("ssh_brute_force_medusa", "300 passwords, all wrong, one thread", MIX, 30, vec![brute(b, 3, false, &o, 60)]);
    let o = format!("-L {users} -P {miss} -t 1 -W 1");
    p.add("ssh_brute_force_users_slow", "8 users, paced, cut at 60 s", ALONE, 60, vec![brute(a, 2, false, &o, 60)]);
    let o = format!("-6 -l {LAB_USER} -P {short} -t 2");
    p.add("ssh_brute_force_v6", "hydra over IPv6, 100 passwords, all wrong", MIX, 27, vec![brute(b, 3, true, &o, 60)]);

    // Every attacker address at once, each at its own rate: four times the attack rows per second of
    // lab time, at rates between those of the single-source runs above. Tools that cannot bind
    // (connect scans, hydra, medusa) take their namespace's route source, so those run one per namespace.
    let syn4 = vec![
        hping(a, 1, "-S -p 80", 300, 22), hping(a, 2, "-S -p 22", 800, 22),
        hping(b, 3, "-S -p 443", 1500, 22), hping(b, 4, "-S -p 8443", 100, 22),
    ];
    p.add("syn_flood_four_sources", "four sources, 100-1500 pps, open and closed ports", MIX, 22, syn4);
    let udp4 = vec![
        hping(a, 1, "--udp -p 7 -d 128", 400, 22), hping(a, 2, "--udp -p 53 -d 40", 1500, 22),
        hping(b, 3, "--udp -p 5000 -d 900", 250, 22), hping(b, 4, "--udp -p 123 -d 48", 150, 22),
    ];
    p.add("udp_flood_four_sources", "four sources, 150-1500 pps, 40-900 byte payloads", MIX, 22, udp4);
    let icmp4 = vec![
        hping(a, 1, "--icmp -d 56", 1500, 22), hping(a, 2, "--icmp -d 300", 300, 22),
        hping(b, 3, "--icmp -d 1000", 500, 22), hping(b, 4, "--icmp -d 20", 120, 22),
    ];
    p.add("icmp_flood_four_sources", "four sources, 120-1500 pps, 20-1000 byte payloads", MIX, 22, icmp4);
    let scan4 = vec![
        nmap(a, 1, false, "-sS -T3 -p 1-3000 --max-rate 60", 55),
        nmap(a, 2, false, "-sS -T4 -p 1-9000 --max-rate 300", 45),
        nmap(b, 3, false, "-sT -T3 -p 2000-6000 --max-rate 120", 50),
        nmap(b, 4, false, "-sU -T4 -p 1-400 --max-rate 40", 55),
    ];
    p.add("port_scan_four_sources", "four sources, SYN, connect and UDP scans at 40-300 probes/s", MIX, 40, scan4);
    let (h1, h2) = (format!("-l {LAB_USER} -P {miss} -t 2"), format!("medusa -u {LAB_USER} -P {miss} -t 2"));
    let ssh2 = vec![brute(a, 2, false, &h1, 50), brute(b, 4, false, &h2, 50)];
    // hping3 counts the source port up by default, so every packet is a new flow; with -k it keeps one
    // port and the whole flood is one flow, as a simple flooder or a reflected stream is.
    let fixed_udp = vec![
        hping(a, 1, "--udp -s 40000 -k -p 9000 -d 512", 800, 20),
        hping(b, 3, "--udp -s 40001 -k -p 53 -d 100", 2500, 20),
    ];
    p.add("udp_flood_fixed_ports", "two sources, one source port each (-k)", MIX, 20, fixed_udp);
    let fixed_syn = vec![
        hping(a, 2, "-S -s 40002 -k -p 80", 1000, 20),
        hping(b, 4, "-S -s 40003 -k -p 8080", 300, 20),
    ];
    p.add("syn_flood_fixed_ports", "two sources, one source port each (-k)", MIX, 20, fixed_syn);
    p.add("ssh_brute_force_two_tools", "hydra and medusa at once, two tasks each, cut at 50 s", MIX, 50, ssh2);
    let (h3, h4) = (format!("-L {users} -P {short} -t 1"), format!("-l {LAB_USER} -P {miss} -t 3"));
    let ssh3 = vec![brute(a, 1, false, &h3, 45), brute(b, 3, false, &h4, 45)];
    p.add("ssh_brute_force_two_sources", "two hydras: user list at one task, one user at three tasks", MIX, 45, ssh3);

    // Everyday traffic a server sees (issue 9): each family alone, at several rates at once from
    // different client addresses, and some in sequence from one address; then attacks alongside the
    // everyday background instead of the office mix. `--only 'benign_*,*_everyday'` records them (and
    // the older benign scenarios).
    let f = files;
    p.add("benign_download_limited", "curl downloads at 200 KB/s, 1, 10 and 50 MB/s (the sensor sees the ACKs)", ALONE, 20, everyday::download_limited(20));
    p.add("benign_download_unlimited", "unlimited curl downloads, one client, then two", ALONE, 16, everyday::download_unlimited(16));
    p.add("benign_upload", "HTTP PUT uploads at 1 and 10 MB/s and unlimited", ALONE, 20, everyday::upload_rates(f, 20));
    p.add("benign_bulk_then_requests", "upload then 30 requests, download then 40, 5 MB/s download then 16 parallel fetches, in a loop", ALONE, 30, everyday::bulk_then_requests(f, 30));
    p.add("benign_ssh_copy", "scp downloads at 20 Mbit/s and unlimited, uploads at 8 Mbit/s and unlimited, ssh cat of 200 MB", ALONE, 20, everyday::ssh_copy(f, 20));
    p.add("benign_long_lived", "ssh session, keep-alive HTTP and a download that go quiet for 10-14 s and resume", ALONE, 40, everyday::long_lived(f, 40));
    p.add("benign_http_sequential", "HTTP one connection per request at 5/s and flat out; keep-alive at 20 and 100 requests/s", ALONE, 20, everyday::http_sequential(20));
    p.add("benign_http_parallel", "browser-like page loads: 16 parallel fetches every 2 s, xargs -P 20 every 3 s, 12 with an image", ALONE, 20, everyday::http_parallel(20));
    p.add("benign_api_polling", "polling every 1 s (new connections) and 0.5 s (keep-alive), JSON POST every 2 s", ALONE, 20, everyday::api_polling(f, 20));
    p.add("benign_monitoring", "ping at 1, 5 and 20/s, metric scrapes and service checks every 5 s", ALONE, 25, everyday::monitoring(f, 25));
    p.add("benign_voice", "RTP-like voice: 1, 4 and 16 calls (50-800 packets/s of 172 B)", ALONE, 20, everyday::voice(f, 20));
    p.add("benign_quic", "QUIC-like bursts of 1200 B datagrams to 443/udp: 1/s of 20 and 4/s of 60", ALONE, 20, everyday::quic(f, 20));
    p.add("benign_dns_ntp", "DNS clients at 5, 50 and 200 queries/s, NTP every 2 s, a new source port per query", ALONE, 20, everyday::dns_ntp(f, 20));
    p.add("benign_ssh_sessions", "interactive ssh, key logins every 2 s and every 1 s, a trickle through a session", ALONE, 25, everyday::ssh_sessions(f, 25));
    p.benign_mix("benign_everyday_mix", 30, EVERYDAY);
    let syn = hping(a, 1, "-S -p 8000", 1500, 15);
    p.add("syn_flood_everyday", "one source at the app port the downloads use, 1500 pps", EVERYDAY, 15, vec![syn]);
    let (q, d) = (hping(a, 2, "--udp -p 443 -d 1200", 2000, 12), hping(b, 3, "--udp -p 53 -d 60", 3000, 12));
    p.add("udp_flood_everyday", "QUIC-sized datagrams to 443 at 2000 pps, DNS-sized to 53 at 3000 pps", EVERYDAY, 12, vec![q, d]);
    p.add("icmp_flood_everyday", "one source, 1500 pps", EVERYDAY, 12, vec![hping(b, 4, "--icmp -d 56", 1500, 12)]);
    let scan = nmap(a, 1, false, "-sS -T4 -p 1-9000 --max-rate 300", 45);
    p.add("port_scan_everyday", "SYN scan at 300 probes/s", EVERYDAY, 30, vec![scan]);
    let o = format!("-l {LAB_USER} -P {miss} -t 4");
    p.add("ssh_brute_force_everyday", "hydra, 4 tasks, all wrong, cut at 40 s", EVERYDAY, 40, vec![brute(b, 3, false, &o, 40)]);
    // Second shapes of what had one scenario only (fixed source ports, slow scans, spoofed ICMP), so
    // that each is seen in training when the other is held out.
    let fixed_syn = vec![hping(a, 1, "-S -s 40010 -k -p 8000", 1500, 15), hping(b, 4, "-S -s 40011 -k -p 9090", 400, 15)];
    p.add("syn_flood_fixed_port_everyday", "two sources, one source port each (-k), open and closed port", EVERYDAY, 15, fixed_syn);
    let fixed_udp = vec![hping(a, 2, "--udp -s 40012 -k -p 5060 -d 300", 1500, 15), hping(b, 3, "--udp -s 40013 -k -p 123 -d 48", 3000, 15)];
    p.add("udp_flood_fixed_port_everyday", "two sources, one source port each (-k), 300 and 48 byte payloads", EVERYDAY, 15, fixed_udp);
    let slow = vec![
        nmap(a, 2, false, "-sS -p 1-150 --max-rate 5", 40),
        nmap(b, 4, false, "-sT -p 1-90 --max-rate 3", 40),
    ];
    p.add("port_scan_slow_everyday", "SYN scan at 5 probes/s, connect scan at 3 probes/s", EVERYDAY, 32, slow);
    let udp_scan = nmap(b, 3, false, "-sU -p 1-1500 --max-rate 100", 40);
    p.add("port_scan_udp_everyday", "UDP scan at 100 probes/s", EVERYDAY, 15, vec![udp_scan]);
    let spoof_icmp = spoofed(hping(b, 3, "--icmp -d 100", 2500, 10));
    p.add("icmp_flood_spoofed_everyday", "random sources, 2500 pps", EVERYDAY, 10, vec![spoof_icmp]);
    p.list
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn files() -> Files {
        super::super::services::files(&PathBuf::from("/w"))
    }

    #[test]
    fn every_step_is_bounded_and_sources_belong_to_their_hosts() {
        for quick in [true, false] {
            let plan = plan(quick, &files());
            let mut names = HashSet::new();
            for s in &plan {
                assert!(
                    names.insert(s.name.clone()),
                    "duplicate scenario {}",
                    s.name
                );
                assert!(
                    !s.steps.is_empty() || !s.hold.is_zero(),
                    "{} does nothing",
                    s.name
                );
                for st in &s.steps {
                    assert!(
                        st.limit <= Duration::from_secs(300),
                        "{}: {:?}",
                        s.name,
                        st.argv
                    );
                    let own = st.host.v4.iter().any(|a| IpAddr::from(*a) == st.src)
                        || st.host.v6.iter().any(|a| IpAddr::from(*a) == st.src);
                    assert!(
                        own,
                        "{}: {} is not an address of {}",
                        s.name, st.src, st.host.ns
                    );
                    if st.argv[0] == "hping3" {
                        assert!(
                            st.argv.contains(&"-c".to_string()),
                            "{}: hping3 without -c",
                            s.name
                        );
                    }
                    let cmd = st.argv.join(" ");
                    if cmd.contains("nmap ") {
                        assert!(cmd.contains("--host-timeout"), "{}", s.name);
                    }
                }
                // Label ground truth: attack scenarios send from attacker addresses only, benign ones
                // from benign addresses only.
                let attack = s.class != Label::Benign;
                assert_eq!(!s.attackers().is_empty(), attack, "{}", s.name);
                let hosts_ok = s
                    .steps
                    .iter()
                    .all(|st| (st.host.role == addrs::Role::Attacker) == attack);
                assert!(hosts_ok, "{} mixes benign and attack steps", s.name);
            }
            for label in Label::ALL {
                assert!(
                    plan.iter().any(|s| s.class == label),
                    "no {label:?} scenario (quick={quick})"
                );
            }
        }
    }

    #[test]
    fn spoofing_and_classes_follow_from_the_steps_and_names() {
        let plan = plan(false, &files());
        let s = plan
            .iter()
            .find(|s| s.name == "syn_flood_spoofed_2k")
            .unwrap();
        assert!(s.spoofed && s.class == Label::SynFlood);
        assert!(
            !s.steps[0].argv.iter().any(|a| a == "-a"),
            "{:?}",
            s.steps[0].argv
        );
        let u = plan.iter().find(|s| s.name == "udp_flood_echo_1k").unwrap();
        assert!(!u.spoofed && u.attackers().contains(&"10.230.12.1".parse().unwrap()));
        assert!(
            u.params
                .contains("hping3 -q -I lab0 --udp -p 7 -d 512 -i u1000 -c 12000"),
            "{}",
            u.params
        );
        let h = plan
            .iter()
            .find(|s| s.name == "ssh_brute_force_hydra")
            .unwrap();
        assert!(h.params.contains("-P words_hit.txt"), "{}", h.params);
    }

    #[test]
    fn plan_lengths_fit_the_time_budget() {
        // Per scenario about 8 s of daemon start, warm-up, cool-down and stop, plus the traffic.
        let total = |quick| {
            plan(quick, &files())
                .iter()
                .map(|s| s.expect.as_secs() + 8)
                .sum::<u64>()
        };
        assert!(
            (90..=180).contains(&total(true)),
            "quick plan {} s",
            total(true)
        );
        assert!(
            (1500..=2000).contains(&total(false)),
            "full plan {} s",
            total(false)
        );
    }
}

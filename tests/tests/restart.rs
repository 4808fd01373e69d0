//! Zero-gap restarts on the real kernel with real traffic: while a blocked source pings the sensor
//! every 10 ms and a control source pings it too, the daemon is stopped (SIGTERM), killed (SIGKILL)
//! or replaced by a different build, and started again. The pinned link keeps the program, and the
//! blocklist, enforcing throughout: the blocked source gets no reply, its entry's hit counter (in the
//! pinned map, read straight from the kernel) grows by exactly the packets it sent, and the control
//! source keeps its replies. Also: an incompatible pinned map is rebuilt with no gap, a second daemon
//! on the interface is refused, and an entry that expired while the daemon was down leaves the kernel
//! within a second of the start.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use netguard_common::BlockValue;
use netguard_tests::{
    daemon::{Daemon, Launch, UPGRADE_VARIANT, netguard_bin, upgrade_bin},
    netns::{
        ATTACKER_V4, NetnsPair, PingStats, SENSOR_IF, SENSOR_V4, bpffs_for, parse_ping,
        require_root,
    },
};

const TOKEN: &str = "restart-test-admin-token-0123456789";
const API: &str = "127.0.0.1:9761";
/// Pings per source: 10 ms apart, so each run lasts about 8 s, which spans a restart.
const PINGS: u32 = 800;

fn blocked() -> Ipv4Addr {
    ATTACKER_V4[1]
}
fn control() -> Ipv4Addr {
    ATTACKER_V4[2]
}

fn pin_dir(lab: &NetnsPair) -> PathBuf {
    bpffs_for(&lab.sensor).join("netguard").join(SENSOR_IF)
}

/// The blocked host's entry in the pinned host table, read from the kernel (None: not an entry).
fn entry(lab: &NetnsPair, ip: Ipv4Addr) -> Option<BlockValue> {
    let data = MapData::from_pin(pin_dir(lab).join("BLOCK_HOST_V4")).ok()?;
    let map: HashMap<MapData, [u8; 4], BlockValue> =
        HashMap::try_from(Map::HashMap(data)).expect("BLOCK_HOST_V4 is a hash map");
    map.get(&ip.octets(), 0).ok()
}

fn hits(lab: &NetnsPair, ip: Ipv4Addr) -> u64 {
    entry(lab, ip)
        .unwrap_or_else(|| panic!("{ip} is not in the kernel's blocklist"))
        .hits
}

/// The pinned link's id and the id of the program it runs.
fn link_ids(lab: &NetnsPair) -> (u32, u32) {
    let link = PinnedLink::from_pin(pin_dir(lab).join("link")).expect("pinned link");
    let info = FdLink::from(link).info().expect("link info");
    (info.id(), info.program_id())
}

/// A bounded background ping: `PINGS` requests 10 ms apart from `from`.
struct Pinger(Option<Child>);

impl Pinger {
    fn start(lab: &NetnsPair, from: Ipv4Addr) -> Pinger {
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.attacker, "timeout", "-k", "2", "40"])
            .args(["ping", "-n", "-q", "-i", "0.01", "-W", "1", "-c"])
            .arg(PINGS.to_string())
            .args(["-I", &from.to_string(), &SENSOR_V4.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping starts");
        Pinger(Some(child))
    }

    fn finish(mut self) -> PingStats {
        let out = self
            .0
            .take()
            .unwrap()
            .wait_with_output()
            .expect("ping ends");
        let text = String::from_utf8_lossy(&out.stdout);
        parse_ping(&text).unwrap_or_else(|| panic!("no ping summary in: {text}"))
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(lab: &NetnsPair, state: &Path, extra: &[&str], bin: Option<PathBuf>) -> Daemon {
    let how = Launch {
        bin,
        ..Launch::default()
    };
    Daemon::launch(&lab.sensor, SENSOR_IF, state, API, TOKEN, extra, how)
}

fn block(d: &Daemon, ip: Ipv4Addr, ttl: Option<&str>) {
    let body = match ttl {
        Some(t) => format!(r#"{{"cidr":"{ip}/32","ttl":"{t}"}}"#),
        None => format!(r#"{{"cidr":"{ip}/32"}}"#),
    };
    let (code, text) = d.post("/api/v1/blocklist", &body);
    assert!(code == 200 || code == 201, "block {ip}: {code} {text}");
}

enum Restart {
    Term,
    Kill,
    Upgrade,
    /// SIGTERM, then a start, both attached through netlink (`--xdp-netlink`): the fallback swaps
    /// with XDP_FLAGS_REPLACE and the expected program.
    Netlink,
}

/// The id of the XDP program on the sensor's interface, as `ip link` shows it.
fn attached_prog(lab: &NetnsPair) -> u32 {
    let out = netguard_tests::netns::run_in(&lab.sensor, &["ip", "-d", "link", "show", SENSOR_IF]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("prog/xdp id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no XDP program on {SENSOR_IF}: {text}"))
}

/// One restart under traffic; returns the daemon's logs of both runs.
fn restart_under_traffic(prefix: &str, how: Restart) -> String {
    let lab = NetnsPair::new(prefix);
    let state = tempfile::tempdir().unwrap();
    // Built before anything runs, so the restart itself is not waiting on cargo.
    let new_bin = matches!(how, Restart::Upgrade).then(upgrade_bin);
    let netlink = matches!(how, Restart::Netlink);
    let extra: &[&str] = if netlink { &["--xdp-netlink"] } else { &[] };
    let ids = |lab: &NetnsPair| {
        if netlink {
            assert!(!pin_dir(lab).join("link").exists(), "a bpf_link was pinned");
            (0, attached_prog(lab))
        } else {
            let (link, prog) = link_ids(lab);
            assert_eq!(prog, attached_prog(lab));
            (link, prog)
        }
    };
    let d = start(&lab, state.path(), extra, None);
    block(&d, blocked(), None);
    let hits_before = hits(&lab, blocked());
    let (link_before, prog_before) = ids(&lab);

    let pb = Pinger::start(&lab, blocked());
    let pc = Pinger::start(&lab, control());
    std::thread::sleep(Duration::from_millis(1500));
    let first_log = match how {
        Restart::Term | Restart::Upgrade | Restart::Netlink => {
            let (status, log) = d.stop();
            assert!(status.success(), "{log}");
            log
        }
        Restart::Kill => d.kill(),
    };
    // The daemon is gone: the kernel enforces on its own for a while.
    std::thread::sleep(Duration::from_millis(500));
    let d = start(&lab, state.path(), extra, new_bin);
    let (b, c) = (pb.finish(), pc.finish());
    let hits_after = hits(&lab, blocked());
    let (link_after, prog_after) = ids(&lab);
    let log = d.log_text();
    let (status, last) = d.stop();
    assert!(status.success(), "{last}");

    assert_eq!(
        b.transmitted, PINGS,
        "the blocked pinger was cut short: {b:?}"
    );
    assert_eq!(
        b.received, 0,
        "the blocked source got replies across the restart"
    );
    assert_eq!(
        hits_after - hits_before,
        u64::from(b.transmitted),
        "every packet of the blocked source hit the blocklist entry"
    );
    assert!(
        c.received * 100 >= c.transmitted * 99,
        "the control source lost replies: {c:?}"
    );
    assert_eq!(
        link_after, link_before,
        "the link was replaced, not updated"
    );
    assert_ne!(
        prog_after, prog_before,
        "the new program was not swapped in"
    );
    assert!(
        log.contains("pinned state in") && log.contains("reused"),
        "{log}"
    );
    if matches!(how, Restart::Upgrade) {
        assert!(
            log.contains(&format!("build variant {UPGRADE_VARIANT}")),
            "the upgrade ran the same build: {log}"
        );
    }
    netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);
    let link = netguard_tests::netns::run_in(&lab.sensor, &["ip", "link", "show", SENSOR_IF]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "netguard detach left a program attached"
    );
    format!("{first_log}{log}")
}

#[test]
fn sigterm_then_start_leaves_no_gap() {
    if !require_root() {
        return;
    }
    let log = restart_under_traffic("rs-term", Restart::Term);
    assert!(log.contains("stays attached and enforcing"), "{log}");
}

#[test]
fn netlink_fallback_restart_swaps_with_the_expected_program_and_no_gap() {
    if !require_root() {
        return;
    }
    let log = restart_under_traffic("rs-netlink", Restart::Netlink);
    assert!(log.contains("through netlink"), "{log}");
}

#[test]
fn sigkill_then_start_leaves_no_gap() {
    if !require_root() {
        return;
    }
    restart_under_traffic("rs-kill", Restart::Kill);
}

#[test]
fn upgrade_to_a_different_build_leaves_no_gap() {
    if !require_root() {
        return;
    }
    restart_under_traffic("rs-upgrade", Restart::Upgrade);
}

/// Pinned maps of another size are rebuilt: new maps are filled from the store while the old
/// program keeps enforcing the old ones, and the program is swapped in only then.
#[test]
fn incompatible_pinned_maps_are_rebuilt_without_a_gap() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("rs-incompat");
    let state = tempfile::tempdir().unwrap();
    let small = state.path().join("small.toml");
    let large = state.path().join("large.toml");
    std::fs::write(&small, "[datapath]\nblocklist_v4_max = 4096\n").unwrap();
    std::fs::write(&large, "[datapath]\nblocklist_v4_max = 8192\n").unwrap();
    let conf = |p: &Path| ["--config".to_owned(), p.display().to_string()];
    let small_args = conf(&small);
    let small_args: Vec<&str> = small_args.iter().map(String::as_str).collect();
    let d = start(&lab, state.path(), &small_args, None);
    block(&d, blocked(), None);
    // A second blocked source hit exactly 40 times before the resize and never after: its counter
    // must come through the rebuild unchanged.
    let quiet = ATTACKER_V4[0];
    block(&d, quiet, None);
    let sent = netguard_tests::netns::ping(
        &lab.attacker,
        &quiet.to_string(),
        &SENSOR_V4.to_string(),
        40,
    );
    assert_eq!((sent.transmitted, sent.received), (40, 0));
    assert_eq!(hits(&lab, quiet), 40);
    let (link_before, _) = link_ids(&lab);
    let old_map = aya::maps::MapInfo::from_pin(pin_dir(&lab).join("BLOCK_HOST_V4")).unwrap();
    assert_eq!(old_map.max_entries(), 4096);

    let pb = Pinger::start(&lab, blocked());
    let pc = Pinger::start(&lab, control());
    std::thread::sleep(Duration::from_millis(1000));
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    let large_args = conf(&large);
    let large_args: Vec<&str> = large_args.iter().map(String::as_str).collect();
    let d = start(&lab, state.path(), &large_args, None);
    let (b, c) = (pb.finish(), pc.finish());
    let log = d.log_text();

    assert_eq!(
        b.received, 0,
        "the blocked source got replies during the rebuild"
    );
    assert!(c.received * 100 >= c.transmitted * 99, "{c:?}");
    assert!(
        log.contains("incompatible") && log.contains("max 4096") && log.contains("max 8192"),
        "no clear line about the rebuild: {log}"
    );
    let new_map = aya::maps::MapInfo::from_pin(pin_dir(&lab).join("BLOCK_HOST_V4")).unwrap();
    assert_eq!(
        new_map.max_entries(),
        8192,
        "the pin still holds the old map"
    );
    assert_ne!(new_map.id(), old_map.id());
    assert!(
        entry(&lab, blocked()).is_some(),
        "the new map was not filled"
    );
    assert_eq!(
        hits(&lab, quiet),
        40,
        "the hit counter did not come through the resize"
    );
    assert_eq!(link_ids(&lab).0, link_before, "the link was replaced");
    let staged: Vec<String> = std::fs::read_dir(pin_dir(&lab))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_new"))
        .collect();
    assert!(staged.is_empty(), "staged pins left behind: {staged:?}");
    let (status, last) = d.stop();
    assert!(status.success(), "{last}");
    netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);
}

#[test]
fn a_second_daemon_on_the_interface_is_refused() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("rs-second");
    let state = tempfile::tempdir().unwrap();
    let d = start(&lab, state.path(), &[], None);
    let other = tempfile::tempdir().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.sensor, "timeout", "20"])
        .arg(netguard_bin())
        .args(["run", "--iface", SENSOR_IF, "--xdp-mode", "skb"])
        .args(["--listen", "127.0.0.1:9762", "--bpffs"])
        .arg(bpffs_for(&lab.sensor))
        .arg("--state-dir")
        .arg(other.path())
        .env("NETGUARD_ADMIN_TOKEN", TOKEN)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second daemon started: {text}");
    assert!(
        text.contains(&format!("held by process {}", d.pid())),
        "the holder is not named: {text}"
    );
    // The first one is unaffected.
    assert!(d.get("/api/v1/health").contains("\"attached\":true"));
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);
}

#[test]
fn an_entry_that_expired_while_down_leaves_within_a_second_of_start() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("rs-expiry");
    let state = tempfile::tempdir().unwrap();
    let d = start(&lab, state.path(), &[], None);
    block(&d, blocked(), Some("3s"));
    let added = Instant::now();
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(
        entry(&lab, blocked()).is_some(),
        "enforced while the daemon is down"
    );
    // Past its expiry, nobody has removed it: the daemon is down.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(added.elapsed()));
    assert!(entry(&lab, blocked()).is_some());

    let t0 = Instant::now();
    let poll = std::thread::scope(|s| {
        let h = s.spawn(|| {
            while t0.elapsed() < Duration::from_secs(10) {
                if entry(&lab, blocked()).is_none() {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        });
        let d = start(&lab, state.path(), &[], None);
        let gone = h.join().unwrap();
        let (status, log) = d.stop();
        assert!(status.success(), "{log}");
        gone
    });
    let gone = poll.expect("the expired entry never left the kernel");
    assert!(
        gone <= Duration::from_secs(1),
        "the expired entry left {gone:?} after the start"
    );
    netguard_tests::daemon::detach(&lab.sensor, SENSOR_IF);
}

/// Inside `ip netns exec`, /sys/fs/bpf is not a bpffs, and a bpffs mounted only in there would
/// vanish with the namespace's processes, pins and all: both are refused before anything is
/// attached, with the fix in the message.
#[test]
fn a_bpffs_that_would_vanish_is_refused_with_the_fix() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("rs-bpffs");
    let state = tempfile::tempdir().unwrap();
    let run = |shell: &str| -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.sensor,
                "timeout",
                "20",
                "sh",
                "-c",
                shell,
            ])
            .env("NETGUARD_ADMIN_TOKEN", TOKEN)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "started: {text}");
        text
    };
    let bin = netguard_bin();
    let base = format!(
        "{} run --iface {SENSOR_IF} --xdp-mode skb --listen 127.0.0.1:9763 --state-dir {}",
        bin.display(),
        state.path().display()
    );
    let default = run(&base);
    assert!(
        default.contains("/sys/fs/bpf is not a bpffs") && default.contains("--bpffs"),
        "{default}"
    );
    let private = state.path().join("private-bpffs");
    let private_run = run(&format!(
        "mkdir -p {p} && mount -t bpf bpf {p} && {base} --bpffs {p}",
        p = private.display()
    ));
    assert!(
        private_run.contains("mounted only in this private mount namespace")
            && private_run.contains("mount -t bpf bpf /run/netguard/bpffs"),
        "{private_run}"
    );
    let link = netguard_tests::netns::run_in(&lab.sensor, &["ip", "link", "show", SENSOR_IF]);
    assert!(!String::from_utf8_lossy(&link.stdout).contains("xdp"));
}

/// `--detach-on-exit`: SIGTERM removes the program and every pin; nothing is left on the interface.
#[test]
fn detach_on_exit_leaves_nothing() {
    if !require_root() {
        return;
    }
    let lab = NetnsPair::new("rs-detach");
    let state = tempfile::tempdir().unwrap();
    let d = start(&lab, state.path(), &["--detach-on-exit"], None);
    block(&d, blocked(), None);
    assert!(pin_dir(&lab).join("link").exists());
    let (status, log) = d.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("removed the pins"), "{log}");
    assert!(
        !bpffs_for(&lab.sensor).join("netguard").exists(),
        "pins left"
    );
    let link = netguard_tests::netns::run_in(&lab.sensor, &["ip", "link", "show", SENSOR_IF]);
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "program left attached"
    );
    let p = netguard_tests::netns::ping(
        &lab.attacker,
        &blocked().to_string(),
        &SENSOR_V4.to_string(),
        2,
    );
    assert_eq!(p.received, 2, "the block outlived --detach-on-exit");
}

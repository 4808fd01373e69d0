//! A throw-away two-namespace lab: "sensor" and "attacker" joined by one veth pair.
//!
//! Traffic rules this module enforces by construction: both veth ends are created directly inside our
//! own namespaces (never in the host namespace, not even for a moment), no namespace gets a default
//! route (only device routes for 10.213.0.0/16 and fd00:213::/32), and `Drop` deletes both namespaces,
//! also while unwinding from a failed assertion. Stale namespaces of a killed earlier run (their name
//! carries a pid that no longer exists) are removed on the next `new`.

use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Every namespace this crate creates starts with this, so stale-namespace cleanup never touches
/// anyone else's.
const NS_PREFIX: &str = "ngt-";

/// Interface names inside the namespaces. They live in private namespaces, so fixed names cannot clash.
pub const SENSOR_IF: &str = "ng-sensor";
pub const ATTACKER_IF: &str = "ng-attacker";

pub const SENSOR_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
/// The attacker's addresses: the first is on the link subnet, the others sit in /24s of their own so a
/// test can block one /24 and still reach the sensor from another.
pub const ATTACKER_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 213, 1, 2),
    Ipv4Addr::new(10, 213, 66, 2),
    Ipv4Addr::new(10, 213, 77, 2),
];
pub const SENSOR_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x213, 1, 0, 0, 0, 0, 1);
pub const ATTACKER_V6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x213, 1, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x213, 0x66, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0xfd00, 0x213, 0x77, 0, 0, 0, 0, 2),
];

/// True when unmet requirements may skip instead of fail (developer machines without root).
fn skip_allowed() -> bool {
    std::env::var("NETGUARD_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

fn current_test() -> String {
    // libtest names each test's thread after the test.
    std::thread::current()
        .name()
        .unwrap_or("netguard-tests")
        .to_string()
}

/// Reports an unmet requirement: a failure normally (`cargo xtask test` provides root and every tool,
/// so a missing one means the environment is broken), a visible skip with `NETGUARD_ALLOW_SKIP=1`.
/// Returns false when the caller should return early.
fn unmet(reason: &str) -> bool {
    if skip_allowed() {
        // Written to the real stderr, not through eprintln!, which libtest captures and would hide for
        // a test that then "passes": a skip must be visible.
        let _ = writeln!(std::io::stderr(), "SKIP {}: {reason}", current_test());
        false
    } else {
        panic!(
            "{}: {reason} (run through `cargo xtask test`, or set NETGUARD_ALLOW_SKIP=1 to skip)",
            current_test()
        );
    }
}

/// `if !require_root() { return; }` at the top of a privileged test.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        unmet("needs root (BPF program load, network namespaces)")
    }
}

/// `if !require_tool("hping3") { return; }`: the tool must be on PATH.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    if found {
        true
    } else {
        unmet(&format!("needs `{tool}` on PATH (apt-get install it)"))
    }
}

/// Runs `program args...` and panics with its output if it fails: lab setup must not half-work.
fn must(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Where each test namespace's bpffs is mounted: in the host's mount namespace, outside /sys, so the
/// daemon's pins survive its restarts (`ip netns exec` remounts /sys, and a bpffs mounted inside it
/// would vanish with the process).
pub const BPFFS_ROOT: &str = "/run/netguard-tests/bpffs";

/// The bpffs for the daemon in namespace `ns` (mounted on first use, unmounted with the namespace):
/// one per namespace, so tests running side by side never share pins.
pub fn bpffs_for(ns: &str) -> std::path::PathBuf {
    let dir = Path::new(BPFFS_ROOT).join(ns);
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let mounted = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type == 0xcafe_4a11;
    if !mounted {
        std::fs::create_dir_all(&dir).expect("bpffs mount point");
        must(
            "mount",
            &["-t", "bpf", "bpf", dir.to_str().expect("utf-8 path")],
        );
    }
    dir
}

/// Unmounts `ns`'s bpffs, which frees every pin in it (the program and maps go with the last
/// reference), and removes the mount point.
pub fn release_bpffs(ns: &str) {
    let dir = Path::new(BPFFS_ROOT).join(ns);
    if dir.exists() {
        let _ = Command::new("umount").arg("-l").arg(&dir).output();
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Deletes `ngt-*` namespaces left by runs that were killed before their `Drop` ran.
fn remove_stale_namespaces() {
    // Their bpffs mounts first (a mount whose namespace is gone is stale too).
    if let Ok(dir) = std::fs::read_dir(BPFFS_ROOT) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NS_PREFIX) && !Path::new("/run/netns").join(&name).exists() {
                release_bpffs(&name);
            }
        }
    }
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        // Name layout: ngt-<prefix>-<pid>-<n>-<role>; the pid is the third field from the end.
        let pid = rest.rsplit('-').nth(2).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !pid_alive(pid)
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Two namespaces joined by a veth pair, deleted on drop.
pub struct NetnsPair {
    pub sensor: String,
    pub attacker: String,
}

impl NetnsPair {
    /// Builds the lab. `prefix` names the test so a leftover namespace says who made it.
    pub fn new(prefix: &str) -> NetnsPair {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_stale_namespaces();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}{prefix}-{}-{n}", std::process::id());
        let sensor = format!("{base}-s");
        let attacker = format!("{base}-a");
        must("ip", &["netns", "add", &sensor]);
        // From here on, a panic drops `lab` and deletes whatever was created.
        let lab = NetnsPair {
            sensor: sensor.clone(),
            attacker: attacker.clone(),
        };
        must("ip", &["netns", "add", &attacker]);
        for ns in [&sensor, &attacker] {
            // No IPv6 duplicate address detection: addresses (also link-local ones, which neighbour
            // discovery uses) must be usable the moment the link is up, or the first pings get lost.
            let out = run_in(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            );
            assert!(out.status.success(), "sysctl in {ns}: {out:?}");
        }
        // Created inside the sensor namespace with its peer placed straight into the attacker's.
        must(
            "ip",
            &[
                "-n",
                &sensor,
                "link",
                "add",
                SENSOR_IF,
                "type",
                "veth",
                "peer",
                "name",
                ATTACKER_IF,
                "netns",
                &attacker,
            ],
        );
        for (ns, dev) in [(&sensor, SENSOR_IF), (&attacker, ATTACKER_IF)] {
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        must(
            "ip",
            &[
                "-n",
                &sensor,
                "addr",
                "add",
                &format!("{SENSOR_V4}/24"),
                "dev",
                SENSOR_IF,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &sensor,
                "addr",
                "add",
                &format!("{SENSOR_V6}/64"),
                "dev",
                SENSOR_IF,
                "nodad",
            ],
        );
        for a in ATTACKER_V4 {
            must(
                "ip",
                &[
                    "-n",
                    &attacker,
                    "addr",
                    "add",
                    &format!("{a}/24"),
                    "dev",
                    ATTACKER_IF,
                ],
            );
        }
        for a in ATTACKER_V6 {
            must(
                "ip",
                &[
                    "-n",
                    &attacker,
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    ATTACKER_IF,
                    "nodad",
                ],
            );
        }
        // Device routes for the lab ranges only, so the sensor can answer the attacker's other /24s.
        // Deliberately no default route anywhere: nothing can leave towards another address.
        must(
            "ip",
            &[
                "-n",
                &sensor,
                "route",
                "add",
                "10.213.0.0/16",
                "dev",
                SENSOR_IF,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &sensor,
                "-6",
                "route",
                "add",
                "fd00:213::/32",
                "dev",
                SENSOR_IF,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &attacker,
                "route",
                "add",
                "10.213.0.0/16",
                "dev",
                ATTACKER_IF,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &attacker,
                "-6",
                "route",
                "add",
                "fd00:213::/32",
                "dev",
                ATTACKER_IF,
            ],
        );
        lab
    }

    /// Moves the calling thread into the sensor namespace until the guard drops.
    pub fn enter_sensor(&self) -> NetnsGuard {
        enter(&self.sensor)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veth end inside it (and with it the peer).
        for ns in [&self.attacker, &self.sensor] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            release_bpffs(ns);
        }
    }
}

/// `ip netns exec NS args...` with a hard `timeout` so a stuck tool cannot hang the suite.
pub fn run_in_timeout(ns: &str, limit: Duration, args: &[&str]) -> Output {
    let secs = limit.as_secs().max(1).to_string();
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "-k", "2", &secs])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec {ns}: {e}"))
}

/// `ip netns exec NS args...`, bounded to 30 s.
pub fn run_in(ns: &str, args: &[&str]) -> Output {
    run_in_timeout(ns, Duration::from_secs(30), args)
}

/// Result of one `ping` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub transmitted: u32,
    pub received: u32,
}

/// `count` echo requests from `from` to `to` inside `ns`, 200 ms apart, each waiting at most 1 s.
pub fn ping(ns: &str, from: &str, to: &str, count: u32) -> PingStats {
    let count_s = count.to_string();
    let out = run_in_timeout(
        ns,
        Duration::from_secs(u64::from(count) + 5),
        &[
            "ping", "-n", "-c", &count_s, "-i", "0.2", "-W", "1", "-I", from, to,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).unwrap_or_else(|| {
        panic!(
            "unparseable ping output: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Reads "N packets transmitted, M received" from ping's summary.
pub fn parse_ping(text: &str) -> Option<PingStats> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line.split(',').map(|part| {
        part.trim()
            .split(' ')
            .next()
            .and_then(|n| n.parse::<u32>().ok())
    });
    Some(PingStats {
        transmitted: nums.next()??,
        received: nums.next()??,
    })
}

/// While alive, the creating thread is in another network namespace; dropping it moves the thread back.
pub struct NetnsGuard {
    original: File,
}

/// Moves the CALLING THREAD (not the process) into namespace `ns` with setns(2). Anything that resolves
/// interface names or opens netlink sockets on this thread (XDP attach) then sees that namespace.
pub fn enter(ns: &str) -> NetnsGuard {
    let original = File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net");
    let target = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{ns}: {e}"));
    // SAFETY: both are valid namespace fds owned by this function; CLONE_NEWNET may be entered by a
    // single thread of a multi-threaded process.
    let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({ns}): {}", std::io::Error::last_os_error());
    NetnsGuard { original }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: `original` is the namespace this thread came from and is still open.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 && !std::thread::panicking() {
            panic!("setns back failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// `ip -d link show DEV` inside `ns`, for checking which XDP mode is attached.
pub fn link_details(ns: &str, dev: &str) -> String {
    let out = run_in(ns, &["ip", "-d", "link", "show", "dev", dev]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_summaries() {
        let ok = "PING 10.213.1.1 (10.213.1.1) from 10.213.1.2 : 56(84) bytes of data.\n\n\
                  --- 10.213.1.1 ping statistics ---\n\
                  3 packets transmitted, 3 received, 0% packet loss, time 401ms\n";
        assert_eq!(
            parse_ping(ok),
            Some(PingStats {
                transmitted: 3,
                received: 3
            })
        );
        let lost = "5 packets transmitted, 0 received, 100% packet loss, time 4090ms\n";
        assert_eq!(parse_ping(lost).unwrap().received, 0);
        let errs = "4 packets transmitted, 0 received, +4 errors, 100% packet loss\n";
        assert_eq!(parse_ping(errs).unwrap().transmitted, 4);
        assert_eq!(parse_ping("ping: connect: Network is unreachable"), None);
    }
}

//! `cargo xtask run`: the daemon on a real interface, or, without `--iface`, a self-contained demo lab.
//!
//! The demo lab follows the traffic rule with no exceptions: packets exist only inside two network
//! namespaces that we create; the veth pair is created inside them (neither end ever sits in the host's
//! namespace); no namespace gets a default route; every traffic generator is bounded in count and time;
//! and the namespaces are removed on every way out (Ctrl-C, daemon exit, error), by Drop guards.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{netns, setup, util};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Attach to this interface. Without it, a demo lab in its own network namespaces is started.
    #[arg(long)]
    pub iface: Option<String>,
    /// Extra arguments for `netguard run` (e.g. `-- --xdp-mode skb`).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

const SENSOR_NS: &str = "ngdemo-sensor";
const PEER_NS: &str = "ngdemo-peer";
const SENSOR_IF: &str = "ngd-s";
const PEER_IF: &str = "ngd-p";
const SENSOR_ADDR: &str = "10.203.0.1";
/// The demo daemon's bpffs (see `netns::bpffs`).
const DEMO_BPFFS: &str = "/run/netguard/demo-bpffs";
const PEER_ADDR: &str = "10.203.0.2";

/// SYN bursts: one every BURST_EVERY, at most BURST_ROUNDS of them, each 100 packets at 500/s.
const BURST_EVERY: Duration = Duration::from_secs(10);
const BURST_ROUNDS: u32 = 60;
/// A burst takes about 0.2 s; past this it is stuck and gets killed.
const BURST_DEADLINE: Duration = Duration::from_secs(5);
/// Time the daemon gets to detach and exit after SIGINT before it is killed.
const DAEMON_GRACE: Duration = Duration::from_secs(15);

pub fn cmd(args: &RunArgs) -> Result<()> {
    // Lab tools only matter for the demo; a real interface needs just the build toolchain.
    setup::setup(args.iface.is_none())?;
    util::say("run", "cargo build --release -p netguard-user");
    util::run(util::cargo().args(["build", "--release", "-p", "netguard-user"]))?;
    let bin = target_dir().join("release/netguard");

    match &args.iface {
        Some(iface) => {
            // Replace this process so the terminal's Ctrl-C goes straight to the daemon, which detaches
            // its program itself. We are root; there is no sudo.
            let mut cmd = Command::new(&bin);
            cmd.args(["run", "--iface", iface]).args(&args.extra);
            util::say("run", util::render(&cmd));
            let err = cmd.exec();
            Err(err).with_context(|| format!("could not exec {}", bin.display()))
        }
        None => demo(&bin, &args.extra),
    }
}

/// The host port the console is forwarded to (the API's own default port; any free one when taken).
const CONSOLE_PORT: u16 = 9740;

/// Where the daemon's API listens inside the sensor namespace: `--listen` among the extra
/// arguments, else the default.
fn listen_addr(extra: &[String]) -> std::net::SocketAddr {
    let given = extra.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--listen=").map(str::to_owned).or_else(|| {
            (a == "--listen")
                .then(|| extra.get(i + 1).cloned())
                .flatten()
        })
    });
    given
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9740)))
}

/// Honours CARGO_TARGET_DIR, which moves where `cargo build` puts the binary.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target"))
}

fn demo(bin: &std::path::Path, extra: &[String]) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the demo lab creates network namespaces and attaches XDP: run as root (there is no sudo)"
        );
    }
    // Installed before anything exists, so a Ctrl-C at any point below reaches the cleanup code instead
    // of killing us with namespaces left behind.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("could not install the Ctrl-C handler")?;

    // Drop order is the reverse of declaration: traffic stops, then the daemon, then the namespaces go.
    let _lab = Lab::create()?;
    let mut daemon = Daemon::start(bin, extra)?;
    // The console: the host's loopback forwarded into the sensor namespace, where the API listens.
    let api = listen_addr(extra);
    let console = crate::forward::start(SENSOR_NS, CONSOLE_PORT, api)?;

    println!();
    println!("NetGuard demo lab");
    println!("  sensor: netns {SENSOR_NS}, {SENSOR_IF} {SENSOR_ADDR}/24 (netguard attached here)");
    println!("  peer:   netns {PEER_NS}, {PEER_IF} {PEER_ADDR}/24 (sends the traffic)");
    println!("  traffic: ping 5/s, plus a 100-packet SYN burst to port 80 every 10 s (hping3);");
    println!("           it stops by itself after 10 minutes. Nothing leaves the two namespaces.");
    println!(
        "  console: open http://{}/ in the host's browser (forwarded from the host's loopback to",
        console.local
    );
    println!(
        "           {api} in netns {SENSOR_NS}). Log in with the admin token the daemon generated:"
    );
    println!(
        "           `cat {}` (paste it once; the browser keeps a session cookie).",
        target_dir().join("ngdemo-state/admin.token").display()
    );
    println!("  Below is netguard's own output. Press Ctrl-C to stop; the lab is removed on exit.");
    println!();

    // Let the daemon attach before traffic starts, so the first packets are counted.
    let attach_wait = Instant::now();
    while attach_wait.elapsed() < Duration::from_secs(2) && !interrupted.load(Ordering::SeqCst) {
        if daemon.exited()?.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // A daemon that already failed (bad argument, attach error) gets no traffic: we go straight to cleanup.
    let _traffic = if daemon.done {
        None
    } else {
        Some(Traffic::start()?)
    };

    let exit = loop {
        if interrupted.load(Ordering::SeqCst) {
            break None;
        }
        if let Some(st) = daemon.exited()? {
            break Some(st);
        }
        thread::sleep(Duration::from_millis(200));
    };
    match exit {
        None => {
            println!();
            util::say(
                "run",
                "Ctrl-C: stopping traffic and netguard, removing the lab",
            );
            Ok(()) // the guards do the rest as they drop
        }
        Some(st) if st.success() => {
            util::say("run", "netguard exited; removing the lab");
            Ok(())
        }
        Some(st) => bail!("netguard exited with {st}; the lab was removed (see its output above)"),
    }
}

/// The two namespaces and the veth pair between them; dropping it removes everything.
struct Lab;

impl Lab {
    fn create() -> Result<Lab> {
        for ns in [SENSOR_NS, PEER_NS] {
            if netns::exists(ns) {
                util::say(
                    "run",
                    format!("removing stale namespace {ns} from an earlier run"),
                );
                netns::remove(ns);
            }
        }
        // The guard exists before the first namespace, so a half-built lab is torn down too.
        let lab = Lab;
        util::say(
            "run",
            format!(
                "creating namespaces {SENSOR_NS} and {PEER_NS} with veth {SENSOR_IF}/{PEER_IF}"
            ),
        );
        netns::ip(&["netns", "add", SENSOR_NS])?;
        netns::ip(&["netns", "add", PEER_NS])?;
        // Created inside the sensor namespace with its peer placed straight into the peer namespace:
        // no end of the pair is ever in the host's namespace, not even for a moment.
        netns::ip(&[
            "-n", SENSOR_NS, "link", "add", SENSOR_IF, "type", "veth", "peer", "name", PEER_IF,
            "netns", PEER_NS,
        ])?;
        for (ns, dev, addr) in [
            (SENSOR_NS, SENSOR_IF, SENSOR_ADDR),
            (PEER_NS, PEER_IF, PEER_ADDR),
        ] {
            // Only the connected /24: no default route, so nothing here can be routed anywhere else.
            netns::ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            netns::ip(&["-n", ns, "link", "set", "lo", "up"])?;
            netns::ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        netns::remove(SENSOR_NS);
        netns::remove(PEER_NS);
        netns::unmount_bpffs(DEMO_BPFFS);
        if netns::exists(SENSOR_NS) || netns::exists(PEER_NS) {
            eprintln!("warning: a ngdemo-* namespace is still there; see `ip netns list`");
        } else {
            util::say(
                "run",
                format!("removed namespaces {SENSOR_NS} and {PEER_NS}"),
            );
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, which stays reserved until we wait() for it.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// The daemon; dropping it sends SIGINT (its clean-detach path) and waits, then kills it if it hangs.
struct Daemon {
    child: Child,
    done: bool,
}

impl Daemon {
    fn start(bin: &std::path::Path, extra: &[String]) -> Result<Daemon> {
        let bin = bin.to_string_lossy();
        let mut args = vec![bin.as_ref(), "run", "--iface", SENSOR_IF];
        // The demo keeps its state (embedded store, generated admin token) apart from the host's
        // /var/lib/netguard, so nothing it does is restored into a real sensor later, and starts empty.
        let state_dir = target_dir().join("ngdemo-state");
        let state_dir = state_dir.to_string_lossy();
        if !extra.iter().any(|a| a.starts_with("--state-dir")) {
            if let Err(e) = std::fs::remove_dir_all(state_dir.as_ref())
                && e.kind() != std::io::ErrorKind::NotFound
            {
                bail!("could not clear the demo state dir {state_dir}: {e}");
            }
            args.extend(["--state-dir", state_dir.as_ref()]);
        }
        // Pins go to a bpffs in the host's mount namespace (inside `ip netns exec`, /sys/fs/bpf is
        // not one); the demo leaves nothing attached or pinned when it ends.
        let bpffs = netns::bpffs(DEMO_BPFFS)?;
        if !extra.iter().any(|a| a.starts_with("--bpffs")) {
            args.extend(["--bpffs", bpffs.as_str(), "--detach-on-exit"]);
        }
        args.extend(extra.iter().map(String::as_str));
        let mut cmd = netns::command(SENSOR_NS, &args);
        util::say("run", util::render(&cmd));
        let child = cmd.spawn().context("could not start netguard")?;
        Ok(Daemon { child, done: false })
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let st = self.child.try_wait().context("could not poll netguard")?;
        self.done |= st.is_some();
        Ok(st)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        signal(&self.child, libc::SIGINT);
        let start = Instant::now();
        while start.elapsed() < DAEMON_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "warning: netguard did not exit {}s after SIGINT; killing it",
            DAEMON_GRACE.as_secs()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bounded traffic from the peer to the sensor; dropping it stops every generator and waits for them.
struct Traffic {
    stop: Arc<AtomicBool>,
    ping: Option<Child>,
    bursts: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start() -> Result<Traffic> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut traffic = Traffic {
            stop: stop.clone(),
            ping: None,
            bursts: None,
        };
        // 3000 pings at 5/s is 10 minutes; -w puts a hard deadline on it as well.
        let ping = netns::command(
            PEER_NS,
            &[
                "ping",
                "-q",
                "-i",
                "0.2",
                "-c",
                "3000",
                "-w",
                "620",
                SENSOR_ADDR,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("could not start ping in the peer namespace")?;
        traffic.ping = Some(ping);
        traffic.bursts = Some(thread::spawn(move || syn_bursts(&stop)));
        Ok(traffic)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut ping) = self.ping.take() {
            let _ = ping.kill();
            let _ = ping.wait();
        }
        if let Some(h) = self.bursts.take() {
            let _ = h.join();
        }
    }
}

/// Every BURST_EVERY, one bounded hping3 SYN burst, until `stop` or BURST_ROUNDS. Its output is
/// discarded so that it does not scroll netguard's live summary away; a failure is reported once.
fn syn_bursts(stop: &AtomicBool) {
    let mut warned = false;
    for _ in 0..BURST_ROUNDS {
        let round = Instant::now();
        let spawned = netns::command(
            PEER_NS,
            &[
                "hping3",
                "-q",
                "-S",
                "-p",
                "80",
                "-c",
                "100",
                "-i",
                "u2000",
                SENSOR_ADDR,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
        match spawned {
            Ok(mut child) => loop {
                match child.try_wait() {
                    // hping3 exits 1 when not every probe got a reply, which is normal here.
                    Ok(Some(st)) if st.code().is_some_and(|c| c <= 1) => break,
                    Ok(Some(st)) => {
                        if !warned {
                            eprintln!(
                                "warning: hping3 burst failed ({st}); the demo continues with ping only"
                            );
                            warned = true;
                        }
                        break;
                    }
                    Ok(None) if stop.load(Ordering::SeqCst) || round.elapsed() > BURST_DEADLINE => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(50)),
                    Err(_) => break,
                }
            },
            Err(e) if !warned => {
                eprintln!(
                    "warning: could not start hping3 ({e}); the demo continues with ping only"
                );
                warned = true;
            }
            Err(_) => {}
        }
        while round.elapsed() < BURST_EVERY {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

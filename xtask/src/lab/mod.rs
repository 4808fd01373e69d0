//! `cargo xtask lab`: makes a labelled data set from real tools, since no labelled intrusion data set
//! can be downloaded. Attackers (hping3, nmap, hydra, medusa) and benign clients (curl, ssh, ping,
//! iperf3, UDP echo) in their own network namespaces send to a sensor namespace that runs real
//! services and NetGuard, which records its own live feature vectors; each scenario's record becomes
//! `<out>/<scenario>.csv` labelled by source address, and `<out>/MANIFEST.md` documents the run.
//!
//! The lab rules (DESIGN.md) hold by construction: see `topology` (namespaces, no default route, no
//! host-side veth), `procs` (every tool under `timeout`, process groups), `scenarios` (counts and
//! limits). Cleanup runs on every way out: guards drop on errors and on Ctrl-C/SIGTERM (the handler
//! only sets a flag that every wait polls), and leftovers of a SIGKILLed run are removed at the next
//! start (`nglab-*` namespaces with what runs in them, the lab user).

mod addrs;
mod benign;
mod clients;
mod everyday;
mod manifest;
mod procs;
mod record;
mod runner;
mod scenarios;
mod sensor;
mod services;
pub mod soak;
mod topology;
pub mod train;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use self::addrs::{BEN_A, HOSTS, Role, SENSOR_V4, SENSOR_V6};
use self::sensor::DaemonFlags;
use crate::{setup, util};

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    /// The short plan (about 2-3 minutes, one scenario per class) for tests, instead of about 30 minutes.
    #[arg(long)]
    pub quick: bool,
    /// Where the labelled files and MANIFEST.md go (default: target/lab-data). Cleared first; a
    /// non-empty directory is only cleared if it holds a MANIFEST.md of an earlier lab run.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only these scenarios (comma-separated names; see --list). A `*` in a name matches any
    /// text, e.g. `--only 'benign_*,*_everyday'`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print the plan's scenarios with their parameters and exit.
    #[arg(long)]
    pub list: bool,
    /// Do not run `setup` first (the lab tools must already be installed).
    #[arg(long)]
    pub no_setup: bool,
    /// Use the netguard binary already in target/release instead of building it first.
    #[arg(long)]
    pub no_build: bool,
    /// Rows of spoofed (random) sources kept per scenario, chosen by whole sources; 0 keeps all. A
    /// spoofed flood otherwise gives ~100 000 near-identical one-packet rows per 10 s.
    #[arg(long, default_value_t = 5000)]
    pub spoof_cap: u64,
    /// Instead of recording: run the benign scenarios (or those --only selects), shuffled and
    /// repeated, against one daemon with blocking on for this long (e.g. "10m"), and report every
    /// alert and block it made (each a false positive; the goal is none).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub soak: Option<Duration>,
    /// Seed of the soak's order.
    #[arg(long, default_value_t = 1)]
    pub soak_seed: u64,
    /// Stop the soak after this many rounds (each runs every selected benign scenario once), even
    /// if its time is not up.
    #[arg(long)]
    pub soak_rounds: Option<u64>,
    /// Fail (exit non-zero) if the soak raised any alert or block: what `cargo xtask test` uses.
    #[arg(long)]
    pub soak_expect_clean: bool,
}

/// Rows before this much time after the benign background starts are dropped (windows filling).
const WARMUP: Duration = Duration::from_secs(3);
/// The daemon keeps running this long after the tools end; those rows are dropped (windows draining).
const COOLDOWN: Duration = Duration::from_secs(2);
/// Tools the lab drives; a missing one is named with the fix.
const TOOLS: &[&str] = &[
    "ip",
    "timeout",
    "hping3",
    "nmap",
    "hydra",
    "medusa",
    "iperf3",
    "curl",
    "ssh",
    "ssh-keygen",
    "ping",
    "ss",
    "sysctl",
    "useradd",
    "userdel",
    "chpasswd",
    "python3",
];

/// Honours CARGO_TARGET_DIR, where `cargo build` puts the daemon.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target"))
}

pub fn cmd(args: &LabArgs) -> Result<()> {
    let target = target_dir();
    let work = target.join("lab-run");
    if args.list {
        let files = services::files(&work);
        for (i, s) in scenarios::plan(args.quick, &files).iter().enumerate() {
            println!(
                "{:>2}. {:<28} {:<15} {}",
                i + 1,
                s.name,
                s.class.as_str(),
                s.params
            );
        }
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "the lab creates network namespaces, a lab user and attaches XDP: run it as root (there is no sudo)"
        );
    }
    if !args.no_setup {
        setup::setup(true)?;
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| util::find_in_path(t).is_none())
        .collect();
    if !missing.is_empty() || !Path::new("/usr/sbin/sshd").exists() {
        bail!("lab tools missing: {missing:?} (and/or /usr/sbin/sshd): run `cargo xtask setup`");
    }
    let bin = target.join("release/netguard");
    if args.no_build {
        if !bin.exists() {
            bail!("--no-build, but there is no {}", bin.display());
        }
    } else {
        util::say("lab", "cargo build --release -p netguard-user");
        util::run(util::cargo().args(["build", "--release", "-p", "netguard-user"]))?;
    }
    let flags = DaemonFlags::probe(&bin)?;
    if !flags.record_features {
        println!();
        println!(
            "!!!!!!!! {} has no --record-features: the scenarios run, nothing is recorded !!!!!!!!",
            bin.display()
        );
        println!();
    }

    if flags.record_features && !flags.dry_run {
        println!(
            "warning: this netguard has no --dry-run: if it blocks attackers, their traffic is dropped mid-scenario"
        );
    }

    fs::create_dir_all(&target)?;
    let _lock = lock(&target.join("lab.lock"))?;
    // Installed before anything exists, so a Ctrl-C at any point reaches the cleanup code.
    ctrlc::set_handler(|| procs::INTERRUPTED.store(true, Ordering::SeqCst))
        .context("could not install the Ctrl-C handler")?;

    // A crashed run's namespaces go before its work dir is rewritten under the tools still in them.
    topology::remove_stale();
    let out = args.out.clone().unwrap_or_else(|| target.join("lab-data"));
    // A soak writes no data set: the last recorded one stays where it is.
    if args.soak.is_none() {
        prepare_out(&out)?;
    }
    let words = if args.quick { 40 } else { 300 };
    let (files, password) = services::prepare(&work, words)?;
    let mut plan = scenarios::plan(args.quick, &files);
    if !args.only.is_empty() {
        let unknown: Vec<&String> = args
            .only
            .iter()
            .filter(|n| !plan.iter().any(|s| selects(n, &s.name)))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "unknown scenario(s) {unknown:?}; see `cargo xtask lab --list{}`",
                if args.quick { " --quick" } else { "" }
            );
        }
        plan.retain(|s| args.only.iter().any(|n| selects(n, &s.name)));
    }
    let estimate: u64 = plan.iter().map(|s| s.expect.as_secs() + 8).sum();
    util::say(
        "lab",
        format!(
            "{} scenarios, about {} min; work dir {}, data to {}",
            plan.len(),
            estimate.div_ceil(60),
            work.display(),
            out.display()
        ),
    );

    let started = Instant::now();
    let started_at = util::probe("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default();
    // Dropped in reverse: services stop, then the user goes, then the namespaces (and anything left
    // in them) are removed.
    let _topo = topology::Topology::create()?;
    let _user = services::LabUser::create(&password)?;
    let _services = services::Services::start(&work, &files)?;
    smoke_test(&files)?;

    let ctx = runner::Ctx {
        bin: &bin,
        flags,
        work: &work,
        out: &out,
        files: &files,
        warmup: WARMUP,
        cooldown: COOLDOWN,
        spoof_cap: args.spoof_cap,
        started,
    };
    if let Some(length) = args.soak {
        let report = soak::run(&ctx, &plan, length, args.soak_seed, args.soak_rounds)?;
        soak::print(&report);
        if args.soak_expect_clean && !(report.alerts.is_empty() && report.blocks.is_empty()) {
            bail!(
                "the benign soak raised {} alert(s) and {} block(s): each is a false positive (see above and {})",
                report.alerts.len(),
                report.blocks.len(),
                work.join("logs/soak").display()
            );
        }
        return Ok(());
    }
    let mut schema = None;
    let mut outcomes = Vec::new();
    let version = util::probe(&bin, &["--version"]).unwrap_or_else(|| bin.display().to_string());
    let used: Vec<&str> = [
        (flags.record_features, "--record-features"),
        (flags.dry_run, "--dry-run"),
        (flags.auth_log, "--auth-log"),
    ]
    .into_iter()
    .filter_map(|(on, f)| on.then_some(f))
    .collect();
    let daemon = format!("{} with {}", version.trim(), used.join(" "));
    for (i, sc) in plan.iter().enumerate() {
        util::say(
            "lab",
            format!(
                "[{}/{}] {} ({}), elapsed {}",
                i + 1,
                plan.len(),
                sc.name,
                sc.class.as_str(),
                runner::elapsed(&ctx)
            ),
        );
        println!("    {}", sc.params);
        let o =
            runner::run(&ctx, sc, &mut schema).with_context(|| format!("scenario {}", sc.name))?;
        println!("    {}", runner::summary(&o));
        outcomes.push(o);
        let meta = manifest::Meta {
            mode: if args.quick { "quick" } else { "full" },
            started: started_at.trim().to_string(),
            total: started.elapsed(),
            warmup: WARMUP,
            cooldown: COOLDOWN,
            spoof_cap: args.spoof_cap,
            schema: schema.as_ref(),
            daemon: daemon.clone(),
        };
        fs::write(out.join("MANIFEST.md"), manifest::render(&meta, &outcomes))?;
    }

    util::say(
        "lab",
        format!(
            "done in {}; manifest {}",
            runner::clock(started.elapsed()),
            out.join("MANIFEST.md").display()
        ),
    );
    for o in &outcomes {
        println!(
            "    {:<28} {}",
            o.name,
            runner::summary(o).lines().next().unwrap_or("")
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failed)
        .map(|o| o.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "scenario(s) failed: {} (see the notes above and {})",
            failed.join(", "),
            work.join("logs").display()
        );
    }
    if !flags.record_features {
        // The orchestration ran (useful on its own), but there is no data set: say so in the status.
        bail!(
            "no data set was written: {} has no --record-features",
            bin.display()
        );
    }
    Ok(())
}

/// Whether an `--only` entry selects a scenario: its exact name, or a pattern with one `*`.
fn selects(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
        None => pattern == name,
    }
}

/// One lab at a time: the namespace names are fixed, so a second run would tear down the first's.
fn lock(path: &Path) -> Result<fs::File> {
    let f =
        fs::File::create(path).with_context(|| format!("could not create {}", path.display()))?;
    // SAFETY: flock(2) on an fd we own; the lock is released when the process exits.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another `cargo xtask lab` is running (lock {} is held)",
            path.display()
        );
    }
    Ok(f)
}

/// Clears the output directory of an earlier run's files, refusing anything that is not one.
fn prepare_out(out: &Path) -> Result<()> {
    if out.exists() {
        let entries: Vec<PathBuf> = fs::read_dir(out)?.flatten().map(|e| e.path()).collect();
        if !entries.is_empty() && !out.join("MANIFEST.md").exists() {
            bail!(
                "{} is not empty and holds no MANIFEST.md of a lab run: choose another --out",
                out.display()
            );
        }
        for p in entries {
            if p.extension().is_some_and(|e| e == "csv") || p.ends_with("MANIFEST.md") {
                fs::remove_file(&p)?;
            }
        }
    }
    fs::create_dir_all(out).with_context(|| format!("could not create {}", out.display()))
}

/// Every host reaches the sensor over v4 and v6 and a benign ssh key login works, before any
/// scenario: a broken lab fails here with a clear message instead of producing an empty data set.
fn smoke_test(files: &services::Files) -> Result<()> {
    let start = Instant::now();
    for h in HOSTS.iter().filter(|h| h.role != Role::Sensor) {
        let (a4, a6) = (h.v4[0].to_string(), h.v6[0].to_string());
        let (s4, s6) = (SENSOR_V4.to_string(), SENSOR_V6.to_string());
        procs::output(
            h.ns,
            &["ping", "-n", "-q", "-c", "1", "-W", "2", "-I", &a4, &s4],
            Duration::from_secs(5),
        )
        .with_context(|| format!("lab check: {} cannot ping the sensor", h.ns))?;
        procs::output(
            h.ns,
            &[
                "ping", "-6", "-n", "-q", "-c", "1", "-W", "2", "-I", &a6, &s6,
            ],
            Duration::from_secs(5),
        )
        .with_context(|| format!("lab check: {} cannot ping the sensor over IPv6", h.ns))?;
    }
    let key = files.client_key.to_string_lossy();
    let src = BEN_A.v4[0].to_string();
    let dst = format!("{}@{SENSOR_V4}", services::LAB_USER);
    let ssh = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        &key,
        "-b",
        &src,
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=3",
        "-o",
        "LogLevel=ERROR",
        &dst,
        "true",
    ];
    procs::output(BEN_A.ns, &ssh, Duration::from_secs(10)).with_context(|| {
        format!(
            "lab check: ssh key login failed; see {}",
            files.sshd_log.display()
        )
    })?;
    util::say(
        "lab",
        format!(
            "lab check passed (ping v4/v6 from every host, ssh key login) in {}",
            util::secs(start.elapsed())
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_takes_names_and_one_star_patterns() {
        use super::selects;
        assert!(selects("benign_voice", "benign_voice"));
        assert!(!selects("benign_voice", "benign_voice2"));
        assert!(selects("benign_*", "benign_voice"));
        assert!(selects("*_everyday", "syn_flood_everyday"));
        assert!(!selects("*_everyday", "syn_flood_80_1k"));
        assert!(
            !selects("benign_*_x", "benign_x"),
            "head and tail must not overlap"
        );
    }
}

//! `cargo xtask setup`: installs what building and testing NetGuard needs, and only what is missing, so
//! it is cheap to run before every build and test. A fresh Debian 12 machine has none of the eBPF
//! toolchain; a developer's machine usually has all of it.
//!
//! Every step prints one line saying "present" or "installing ...", then how long it took. A failing
//! step names itself and says what to try.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{self, say};

#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    /// Skip the lab and test tools (hping3, nmap, sshd, redis, ...); install only the build toolchain.
    #[arg(long)]
    pub no_lab_tools: bool,
}

/// LLVM 22 is what bpf-linker links against (bookworm-security ships it); polly, zstd and zlib are
/// libraries that linking against libLLVM needs. The default `llvm-config` on Debian 12 is LLVM 14.
const TOOLCHAIN_PKGS: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Real tools that the privileged tests and the demo lab drive inside network namespaces.
const LAB_PKGS: &[&str] = &[
    // The console's browser tests (tests/tests/console.rs) drive Debian's own chromium.
    "chromium",
    "iproute2",
    "iputils-ping",
    "hping3",
    "nmap",
    "iperf3",
    "tcpdump",
    "curl",
    "ethtool",
    "openssh-server",
    "openssh-client",
    "hydra",
    "medusa",
    "tcpreplay",
    "redis-server",
    "prometheus",
    "procps",
    // The lab (`cargo xtask lab`): its UDP echo service and HTTP servers, and useradd/chpasswd for
    // its login user. Both are on a stock Debian 12; listed so a slim image gets them too.
    "python3",
    "passwd",
    // The TLS tests make their CA and certificates with the openssl command.
    "openssl",
    // The install test checks the unit with `systemd-analyze verify` (no systemd needs to run).
    "systemd",
];

const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn cmd(args: &SetupArgs) -> Result<()> {
    setup(!args.no_lab_tools)
}

/// Runs every setup step; `lab_tools` adds the packages that tests and the demo lab need.
pub fn setup(lab_tools: bool) -> Result<()> {
    let start = Instant::now();
    let mut apt = Apt::default();

    step(
        "apt: eBPF toolchain (llvm-22-dev, libpolly-22-dev, libzstd-dev, zlib1g-dev)",
        "check that bookworm-security is in the apt sources (`apt-cache policy llvm-22-dev`), then rerun",
        |s| apt.ensure(s, TOOLCHAIN_PKGS),
    )?;

    let toolchain = rust_src_toolchain()?;
    step(
        &format!("rustup: rust-src for {toolchain}"),
        &format!("run `rustup component add rust-src --toolchain {toolchain}` by hand"),
        |s| ensure_component(s, "rust-src", toolchain),
    )?;
    // The lint stage of `cargo xtask test` (rustfmt, clippy): the default toolchain's own.
    for component in ["rustfmt", "clippy"] {
        step(
            &format!("rustup: {component} for the default toolchain"),
            &format!("run `rustup component add {component}` by hand"),
            |s| ensure_component(s, component, "stable"),
        )?;
    }

    step(
        "bpf-linker (linked to LLVM 22)",
        "make sure llvm-22-dev is installed, then run `PATH=/usr/lib/llvm-22/bin:$PATH cargo install \
         bpf-linker --locked --force --no-default-features --features llvm-22`",
        ensure_bpf_linker,
    )?;

    if lab_tools {
        step(
            "apt: lab and test tools (hping3, nmap, sshd, hydra, redis, prometheus, ...)",
            "run `apt-get update` and install the package named above by hand to see apt's full error",
            |s| apt.ensure(s, LAB_PKGS),
        )?;
    } else {
        say(
            "setup",
            "apt: lab and test tools: skipped (--no-lab-tools, or not needed by this command)",
        );
    }

    if lab_tools {
        step(
            "npm: dashboard type-check tools (@grafana/schema, typescript)",
            "run `npm ci --no-audit --no-fund` in dashboards/ to see npm's error",
            ensure_dashboard_tools,
        )?;
        step(
            &format!(
                "npm: console test tools (playwright-core {PLAYWRIGHT} for chromium {CHROMIUM_MAJOR}, axe-core, world-atlas)"
            ),
            "run `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund` in tests/console/ to see npm's error",
            ensure_console_tools,
        )?;
        step(
            &format!("pip: schemathesis {SCHEMATHESIS} in target/schemathesis-venv"),
            "run `python3 -m venv target/schemathesis-venv` and its `bin/pip install schemathesis==...` by hand",
            ensure_schemathesis,
        )?;
    }

    say("setup", format!("done in {}", util::secs(start.elapsed())));
    Ok(())
}

/// One setup step: the closure calls `installing` before doing real work, so the printed line says
/// whether anything changed. Errors are wrapped with the step's name and what to try.
struct Step {
    name: String,
    installed: bool,
}

impl Step {
    fn installing(&mut self, what: &str) {
        say("setup", format!("{}: installing {what} ...", self.name));
        self.installed = true;
    }
}

fn step(name: &str, hint: &str, f: impl FnOnce(&mut Step) -> Result<()>) -> Result<()> {
    let start = Instant::now();
    let mut s = Step {
        name: name.to_string(),
        installed: false,
    };
    f(&mut s).with_context(|| format!("setup step `{name}` failed\n  try: {hint}"))?;
    let what = if s.installed { "installed" } else { "present" };
    say(
        "setup",
        format!("{name}: {what} ({})", util::secs(start.elapsed())),
    );
    Ok(())
}

/// apt state across steps, so `apt-get update` runs at most once and only when something is missing.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn ensure(&mut self, step: &mut Step, pkgs: &[&str]) -> Result<()> {
        let missing: Vec<&str> = pkgs
            .iter()
            .copied()
            .filter(|p| !dpkg_installed(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        step.installing(&missing.join(" "));
        if !util::is_root() {
            bail!(
                "missing Debian packages ({}) and not root: run as root (there is no sudo)",
                missing.join(" ")
            );
        }
        // Package scripts must not start redis, sshd or prometheus as system services: the tests start
        // their own instances on loopback ports they choose, and a system redis would hold 6379.
        let _guard = NoServiceStarts::new()?;
        if !self.updated {
            util::run(apt_get().arg("update"))?;
            self.updated = true;
        }
        util::run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                // Wait for a concurrent apt/dpkg instead of failing at once on its lock.
                .args(["-o", "DPkg::Lock::Timeout=300"])
                .args(&missing),
        )?;
        let still: Vec<&str> = missing.into_iter().filter(|p| !dpkg_installed(p)).collect();
        if !still.is_empty() {
            bail!(
                "apt-get succeeded but these are still not installed: {}",
                still.join(" ")
            );
        }
        Ok(())
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null());
    cmd
}

fn dpkg_installed(pkg: &str) -> bool {
    // Unknown packages make dpkg-query fail, which probe() reports as None: that means "missing" too.
    util::probe("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.trim() == "install ok installed")
}

const POLICY_RC: &str = "/usr/sbin/policy-rc.d";
const POLICY_RC_MARKER: &str = "written by cargo xtask setup";

/// Stops Debian maintainer scripts from starting services while it lives: invoke-rc.d honours an
/// executable /usr/sbin/policy-rc.d that exits 101. An existing file belongs to someone else (Docker
/// images ship one) and is left alone; ours is removed on drop, so also when the install fails. A file
/// with our marker is a leftover of a run that was killed mid-install, and is ours to remove.
struct NoServiceStarts {
    ours: bool,
}

impl NoServiceStarts {
    fn new() -> Result<Self> {
        match fs::read_to_string(POLICY_RC) {
            Ok(text) => {
                return Ok(Self {
                    ours: text.contains(POLICY_RC_MARKER),
                });
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Ok(Self { ours: false }),
            Err(_) => {}
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(POLICY_RC)
            .with_context(|| format!("could not create {POLICY_RC}"))?;
        writeln!(
            f,
            "#!/bin/sh\n# {POLICY_RC_MARKER}: no service starts during package installs\nexit 101"
        )
        .with_context(|| format!("could not write {POLICY_RC}"))?;
        Ok(Self { ours: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.ours
            && let Err(e) = fs::remove_file(POLICY_RC)
        {
            eprintln!("warning: could not remove {POLICY_RC}: {e}; remove it by hand");
        }
    }
}

/// The toolchain aya-build will use for the eBPF crate: nightly when there is one (its default),
/// otherwise stable with RUSTC_BOOTSTRAP=1, which netguard-user/build.rs selects by itself.
/// We never install a toolchain: the machine has the ones it has.
fn rust_src_toolchain() -> Result<&'static str> {
    let list = util::probe("rustup", &["toolchain", "list"]).context(
        "`rustup toolchain list` failed: rustup is needed to build the eBPF crate (install rustup)",
    )?;
    // aya-build runs `rustup run nightly`, which means the undated channel; a dated nightly
    // (nightly-2025-01-01-...) would not be used.
    let has_nightly = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|tc| {
            tc == "nightly"
                || tc
                    .strip_prefix("nightly-")
                    .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_digit()))
        });
    if has_nightly {
        Ok("nightly")
    } else {
        say(
            "setup",
            "no nightly toolchain: the eBPF crate will be built with stable + RUSTC_BOOTSTRAP=1",
        );
        Ok("stable")
    }
}

fn ensure_component(step: &mut Step, component: &str, toolchain: &str) -> Result<()> {
    let installed = util::probe(
        "rustup",
        &["component", "list", "--installed", "--toolchain", toolchain],
    )
    .with_context(|| format!("`rustup component list --toolchain {toolchain}` failed"))?;
    if installed.lines().any(|l| l.starts_with(component)) {
        return Ok(());
    }
    step.installing(&format!("{component} for {toolchain}"));
    util::run(Command::new("rustup").args([
        "component",
        "add",
        component,
        "--toolchain",
        toolchain,
    ]))
}

fn ensure_bpf_linker(step: &mut Step) -> Result<()> {
    let existing = util::find_in_path("bpf-linker");
    if existing.as_deref().is_some_and(linker_is_good) {
        return Ok(());
    }
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        bail!("{LLVM_BIN}/llvm-config not found: llvm-22-dev is not installed");
    }
    let what = match &existing {
        Some(p) => format!(
            "bpf-linker (the one at {} does not run or is not linked to LLVM 22)",
            p.display()
        ),
        None => "bpf-linker with cargo install (about 70 s)".to_string(),
    };
    step.installing(&what);
    let mut cmd = util::cargo();
    cmd.args([
        "install",
        "bpf-linker",
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    // Without LLVM 22's bin first, llvm-sys finds Debian's default llvm-config (14) and the link
    // fails with "-lLLVM not found".
    .env("PATH", util::path_with_prefix(Path::new(LLVM_BIN)));
    if existing.is_some() {
        cmd.arg("--force"); // cargo install skips a crate it believes is already installed
    }
    util::run(&mut cmd)?;
    match util::find_in_path("bpf-linker") {
        Some(p) if linker_is_good(&p) => Ok(()),
        Some(p) => bail!(
            "installed bpf-linker at {} but it still does not link to libLLVM 22",
            p.display()
        ),
        None => bail!(
            "cargo install finished but bpf-linker is not on PATH (is $CARGO_HOME/bin on PATH?)"
        ),
    }
}

/// Good means it runs and its dynamic libLLVM is version 22, the one this toolchain was proven with.
fn linker_is_good(path: &Path) -> bool {
    util::probe(path, &["--version"]).is_some()
        && util::probe("ldd", &[&path.to_string_lossy()])
            .is_some_and(|out| out.contains("libLLVM.so.22") || out.contains("libLLVM-22"))
}

/// The version tests/tests/schemathesis.rs pins; it checks the venv holds exactly this one.
const SCHEMATHESIS: &str = "4.32.5";

/// The playwright-core that tests/console/package.json pins, and the chromium major version it
/// drives (Playwright supports the Chromium of its own release; Debian's chromium must match).
const PLAYWRIGHT: &str = "1.64.1";
const CHROMIUM_MAJOR: u32 = 156;

/// `npm ci` in tests/console/ (never downloading a browser), and a check that Debian's chromium is
/// the version the pinned playwright-core drives.
fn ensure_console_tools(s: &mut Step) -> Result<()> {
    let out = Command::new("/usr/lib/chromium/chromium")
        .arg("--version")
        .output()
        .context("chromium is not installed: `apt-get install -y chromium`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major: Option<u32> = text
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok());
    if major != Some(CHROMIUM_MAJOR) {
        bail!(
            "chromium says `{}`, but tests/console pins playwright-core {PLAYWRIGHT}, which drives \
             chromium {CHROMIUM_MAJOR}: pin the playwright-core release made for this chromium in \
             tests/console/package.json (and PLAYWRIGHT/CHROMIUM_MAJOR in xtask/src/setup.rs)",
            text.trim()
        );
    }
    npm_ci(s, &util::workspace_root().join("tests/console"))
}

/// `npm ci` in dashboards/ when node_modules is missing or older than the lock file.
fn ensure_dashboard_tools(s: &mut Step) -> Result<()> {
    npm_ci(s, &util::workspace_root().join("dashboards"))
}

/// `npm ci` in `dir` when its node_modules is missing or older than the lock file.
fn npm_ci(s: &mut Step, dir: &Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let stamp = dir.join("node_modules/.package-lock.json");
    let fresh = match (
        fs::metadata(&lock).and_then(|m| m.modified()),
        fs::metadata(&stamp).and_then(|m| m.modified()),
    ) {
        (Ok(l), Ok(st)) => st >= l,
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    if util::find_in_path("npm").is_none() {
        bail!("npm is not installed: `apt-get install -y nodejs npm`");
    }
    s.installing("node_modules (npm ci)");
    util::run(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(dir),
    )
}

/// A venv with the pinned schemathesis, under the target dir (never the system Python).
fn ensure_schemathesis(s: &mut Step) -> Result<()> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target"));
    let venv = target.join("schemathesis-venv");
    let python = venv.join("bin/python");
    let have = util::probe(
        &python,
        &[
            "-c",
            "import importlib.metadata as m; print(m.version('schemathesis'))",
        ],
    );
    if have.as_deref().map(str::trim) == Some(SCHEMATHESIS) {
        return Ok(());
    }
    s.installing(&format!("schemathesis {SCHEMATHESIS}"));
    if !python.exists() {
        util::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS}")),
    )
}

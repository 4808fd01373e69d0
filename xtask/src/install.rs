//! `cargo xtask install` and `uninstall`: NetGuard as a system service.
//!
//! Install puts the release binary in /usr/local/bin, a commented sample config (every section, with
//! its defaults) in /etc/netguard/netguard.toml when there is none, and the hardened template unit
//! `netguard@.service` (the instance is the interface) in /etc/systemd/system. Running it again
//! changes nothing; an edited config is never overwritten. Uninstall removes exactly that (the config
//! only while it is still the unedited sample), and `--purge` the state too. `--root DIR` does all of
//! it under DIR instead of `/` (packaging, and the tests, which must not touch the real /etc).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util;

pub const UNIT: &str = include_str!("../../packaging/netguard@.service");
pub const SAMPLE_CONFIG: &str = include_str!("../../packaging/netguard.toml");

const BIN: &str = "usr/local/bin/netguard";
const CONFIG: &str = "etc/netguard/netguard.toml";
const UNIT_PATH: &str = "etc/systemd/system/netguard@.service";
const STATE: &str = "var/lib/netguard";

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Install under this directory instead of `/` (nothing outside it is touched, systemd is not
    /// told).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Install this netguard binary instead of building the release one.
    #[arg(long)]
    pub bin: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Also delete the state directory (/var/lib/netguard: stored lists, alerts, admin token).
    #[arg(long)]
    pub purge: bool,
}

fn live(root: &Path) -> bool {
    root == Path::new("/")
}

/// Whether systemd runs this machine (PID 1), so systemctl can be told about the unit.
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Writes `data` to `path` with `mode` unless it already holds exactly that; says which.
fn put(path: &Path, data: &[u8], mode: u32) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    let same = std::fs::read(path).is_ok_and(|old| old == data);
    if !same {
        // Write beside it and rename: a running binary is replaced, not rewritten in place.
        let tmp = path.with_extension("netguard-new");
        std::fs::write(&tmp, data).with_context(|| format!("could not write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("could not install {}", path.display()))?;
    }
    Ok(!same)
}

pub fn install(args: &InstallArgs) -> Result<()> {
    if live(&args.root) && !util::is_root() {
        bail!("installing into / needs root (there is no sudo); or pass --root DIR");
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => {
            util::say("install", "cargo build --release -p netguard-user");
            util::run(util::cargo().args(["build", "--release", "-p", "netguard-user"]))?;
            util::workspace_root().join("target/release/netguard")
        }
    };
    let data = std::fs::read(&bin).with_context(|| format!("no binary at {}", bin.display()))?;
    let root = &args.root;
    let changed = put(&root.join(BIN), &data, 0o755)?;
    util::say(
        "install",
        format!(
            "{} {}",
            if changed { "installed" } else { "unchanged:" },
            root.join(BIN).display()
        ),
    );
    let config = root.join(CONFIG);
    if config.exists() {
        util::say("install", format!("kept the existing {}", config.display()));
    } else {
        put(&config, SAMPLE_CONFIG.as_bytes(), 0o600)?;
        util::say(
            "install",
            format!("wrote the sample config {}", config.display()),
        );
    }
    let changed = put(&root.join(UNIT_PATH), UNIT.as_bytes(), 0o644)?;
    util::say(
        "install",
        format!(
            "{} {}",
            if changed { "installed" } else { "unchanged:" },
            root.join(UNIT_PATH).display()
        ),
    );
    if live(root) && systemd_running() {
        util::run(std::process::Command::new("systemctl").arg("daemon-reload"))?;
    }
    util::say(
        "install",
        "start it on an interface with `systemctl enable --now netguard@IFACE` (see README: Running NetGuard as a service)",
    );
    Ok(())
}

pub fn uninstall(args: &UninstallArgs) -> Result<()> {
    if live(&args.root) && !util::is_root() {
        bail!("uninstalling from / needs root (there is no sudo); or pass --root DIR");
    }
    let root = &args.root;
    if live(root) {
        if systemd_running() {
            // Stops every instance; the programs they leave attached are detached below.
            let _ = std::process::Command::new("systemctl")
                .args(["disable", "--now", "netguard@*.service"])
                .status();
        }
        detach_all(&root.join(BIN));
    }
    for rel in [BIN, UNIT_PATH] {
        let p = root.join(rel);
        match std::fs::remove_file(&p) {
            Ok(()) => util::say("uninstall", format!("removed {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("could not remove {}", p.display())),
        }
    }
    let config = root.join(CONFIG);
    match std::fs::read_to_string(&config) {
        Ok(text) if text == SAMPLE_CONFIG => {
            std::fs::remove_file(&config)?;
            util::say(
                "uninstall",
                format!("removed the unedited sample {}", config.display()),
            );
        }
        Ok(_) => util::say(
            "uninstall",
            format!(
                "kept {} (edited); delete it yourself if it is no longer wanted",
                config.display()
            ),
        ),
        Err(_) => {}
    }
    // Directories install created, if nothing else lives in them.
    for rel in [
        "etc/netguard",
        "etc/systemd/system",
        "etc/systemd",
        "usr/local/bin",
        "usr/local",
        "usr",
        "etc",
    ] {
        if !live(root) || rel == "etc/netguard" {
            let _ = std::fs::remove_dir(root.join(rel));
        }
    }
    let state = root.join(STATE);
    if args.purge && state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("could not remove {}", state.display()))?;
        util::say("uninstall", format!("purged {}", state.display()));
    } else if state.exists() {
        util::say(
            "uninstall",
            format!("kept the state in {} (--purge deletes it)", state.display()),
        );
    }
    if live(root) && systemd_running() {
        let _ = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status();
    }
    Ok(())
}

/// `netguard detach` for every interface with pins under /sys/fs/bpf/netguard.
fn detach_all(bin: &Path) {
    let Ok(dirs) = std::fs::read_dir("/sys/fs/bpf/netguard") else {
        return;
    };
    for d in dirs.flatten() {
        let iface = d.file_name().to_string_lossy().into_owned();
        let st = std::process::Command::new(bin)
            .args(["detach", "--iface", &iface])
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!(
                "warning: could not detach from {iface}; run `netguard detach --iface {iface}`"
            );
        }
    }
}

//! `cargo xtask install` / `uninstall` on a staging root (never the real /etc): the installed unit
//! passes `systemd-analyze verify` with no warning, installing twice changes nothing, and uninstall
//! leaves the tree exactly as it was; an edited config survives both.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use netguard_tests::{daemon::netguard_bin, netns::require_tool};

/// Every path under `root` with its mode and, for files, its contents.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_owned();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                stack.push(p);
                out.insert(rel, (mode, None));
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(
                    rel,
                    (mode, Some(target.into_os_string().into_encoded_bytes())),
                );
            } else {
                out.insert(rel, (mode, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out
}

fn xtask(args: &[&str]) -> Output {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["run", "-q", "-p", "xtask", "--"])
        .args(args)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo xtask {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn installed_unit_verifies_and_uninstall_leaves_the_system_as_it_was() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A host to install into: something of its own in /etc, and systemd's own units (the targets
    // the unit's default dependencies name), which `systemd-analyze verify --root` loads.
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "staging\n").unwrap();
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    let cp = Command::new("cp")
        .args(["-a", "/lib/systemd/system"])
        .arg(root.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(cp.success());
    let before = tree(root);

    let bin = netguard_bin();
    let root_s = root.to_str().unwrap();
    let install = ["install", "--root", root_s, "--bin", bin.to_str().unwrap()];
    xtask(&install);
    let mode = |rel: &str| {
        std::fs::metadata(root.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/netguard"), 0o755);
    assert_eq!(mode("etc/netguard/netguard.toml"), 0o600);
    assert_eq!(mode("etc/systemd/system/netguard@.service"), 0o644);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/netguard@.service")).unwrap();
    for want in [
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE",
        "ProtectSystem=strict",
        "StateDirectory=netguard",
        "--iface %i",
    ] {
        assert!(unit.contains(want), "`{want}` missing from the unit");
    }
    // The installed config is the sample, which the daemon reads as its defaults.
    let config = std::fs::read_to_string(root.join("etc/netguard/netguard.toml")).unwrap();
    assert!(config.contains("[datapath]") && config.contains("[trust]"));

    let verify: Output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={root_s}"))
        .arg(root.join("etc/systemd/system/netguard@.service"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warns: {said}"
    );

    // Idempotent: a second install changes nothing.
    let installed = tree(root);
    xtask(&install);
    assert_eq!(tree(root), installed, "a second install changed the tree");

    xtask(&["uninstall", "--root", root_s]);
    assert_eq!(tree(root), before, "uninstall did not restore the tree");

    // An edited config is the operator's: neither a reinstall nor an uninstall touches it.
    xtask(&install);
    let cfg = root.join("etc/netguard/netguard.toml");
    std::fs::write(&cfg, "log_format = \"json\"\n").unwrap();
    xtask(&install);
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "log_format = \"json\"\n"
    );
    let out = xtask(&["uninstall", "--root", root_s]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
    assert!(cfg.exists());
    assert!(!root.join("usr/local/bin/netguard").exists());
}

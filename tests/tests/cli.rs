//! The `netguard` binary's error messages: each failure a user is likely to hit on first contact says
//! what went wrong and what to do, and exits non-zero without leaving anything attached.

use std::{path::PathBuf, process::Command};

use netguard_tests::netns::{NetnsPair, require_root};

/// target/<profile>/netguard, next to this test's deps/ directory. `cargo xtask test` builds it.
fn netguard_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("netguard");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p netguard-user --bin netguard` (cargo xtask test does)",
        bin.display()
    );
    bin
}

fn stderr_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn missing_interface_is_named_with_a_hint() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(netguard_bin())
        .args(["run", "--iface", "ng-no-such-if0", "--state-dir"])
        .arg(state.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = stderr_of(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("ng-no-such-if0") && text.contains("ip link"),
        "{text}"
    );
}

#[test]
fn non_root_is_told_to_run_as_root() {
    if !require_root() {
        return;
    }
    // setpriv (util-linux) drops to an unprivileged user: the check must fire before anything loads.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(netguard_bin())
        .args(["run", "--iface", "lo"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("setpriv runs");
    let text = stderr_of(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("root"), "{text}");
}

#[test]
fn refused_driver_mode_suggests_skb_and_attaches_nothing() {
    if !require_root() {
        return;
    }
    // Loopback has no native XDP support: driver mode must be refused with a hint, not fall back.
    let lab = NetnsPair::new("cli");
    let state = tempfile::tempdir().unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.sensor,
            netguard_bin().to_str().unwrap(),
        ])
        .args([
            "run",
            "--iface",
            "lo",
            "--xdp-mode",
            "driver",
            "--bpffs",
            netguard_tests::netns::bpffs_for(&lab.sensor)
                .to_str()
                .unwrap(),
            "--state-dir",
        ])
        .arg(state.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = stderr_of(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("driver") && text.contains("--xdp-mode skb"),
        "{text}"
    );
    let link = Command::new("ip")
        .args(["-n", &lab.sensor, "link", "show", "lo"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "a program stayed attached to lo"
    );
}

//! Network-namespace helpers for the demo lab (and the `lab` subcommand to come): running `ip`,
//! starting commands inside a namespace, and removing a namespace with whatever still runs in it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::util;

/// Runs `ip` and fails on a non-zero exit, with ip's own stderr visible to the user.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("could not run `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether `ip netns list` shows the namespace (its lines are "NAME" or "NAME (id: N)").
pub fn exists(name: &str) -> bool {
    util::probe("ip", &["netns", "list"]).is_some_and(|l| {
        l.lines()
            .any(|line| line.split_whitespace().next() == Some(name))
    })
}

/// Removes a namespace and anything still running in it (a crashed earlier run can leave both). A
/// namespace is only freed when its last process is gone, so the processes go first.
pub fn remove(name: &str) {
    if !exists(name) {
        return;
    }
    if let Some(pids) = util::probe("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) with a pid taken from the namespace; at worst it fails with ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        eprintln!("warning: {e}; remove it with `ip netns del {name}`");
    }
}

/// A command in one of our namespaces, in its own process group so that the terminal's Ctrl-C reaches
/// only xtask, which then stops everything in order. `ip netns exec` execs the command, so the child's
/// pid is the tool's own pid and signals reach it directly.
pub fn command(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

/// A bpffs for a daemon started with `ip netns exec` (which remounts /sys, so /sys/fs/bpf is not one
/// in there): mounted at `dir` in the host's mount namespace, where it outlives the daemon and its
/// pins survive restarts. Returns the path for `netguard run --bpffs`.
pub fn bpffs(dir: &str) -> Result<String> {
    let mounted =
        util::probe("stat", &["-f", "-c", "%T", dir]).is_some_and(|t| t.trim() == "bpf_fs");
    if !mounted {
        std::fs::create_dir_all(dir).with_context(|| format!("could not create {dir}"))?;
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf", dir])
            .status()
            .context("could not run mount")?;
        if !st.success() {
            bail!("`mount -t bpf bpf {dir}` failed");
        }
    }
    Ok(dir.to_owned())
}

/// Unmounts a bpffs from [`bpffs`] (which frees whatever is still pinned in it).
pub fn unmount_bpffs(dir: &str) {
    let _ = Command::new("umount").args(["-l", dir]).status();
    let _ = std::fs::remove_dir(dir);
}

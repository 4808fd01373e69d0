//! `cargo xtask train [-- args]`: builds the daemon and runs `netguard train --data DIR [args]` on a
//! labelled data set. The training itself (model, metrics) belongs to the daemon's subcommand; this
//! only gets it built and started the same way every time.
//!
//! Without `--data` it trains on the data set shipped in the repository
//! (netguard-user/models/lab-data), with `netguard train`'s default parameters and fixed seed, which
//! rewrites netguard-user/models/default.json and default.md byte for byte as shipped. A fresh lab run
//! (`cargo xtask lab`, into target/lab-data) is trained with `--data target/lab-data`; to ship it,
//! record it with `cargo xtask lab --out netguard-user/models/lab-data` and train again.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::util;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The labelled data set directory (default: the shipped one, netguard-user/models/lab-data;
    /// `cargo xtask lab` writes target/lab-data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Arguments passed on to `netguard train`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The data set the shipped model was trained on, relative to the workspace root.
pub const SHIPPED_DATA: &str = "netguard-user/models/lab-data";

pub fn cmd(args: &TrainArgs) -> Result<()> {
    let target = super::target_dir();
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| util::workspace_root().join(SHIPPED_DATA));
    // A lab run's directory, or one holding several runs (the shipped data set).
    let has_manifest = |d: &std::path::Path| d.join("MANIFEST.md").is_file();
    let runs = std::fs::read_dir(&data)
        .map(|it| it.flatten().any(|e| has_manifest(&e.path())))
        .unwrap_or(false);
    if !has_manifest(&data) && !runs {
        bail!(
            "{} holds no lab data set (no MANIFEST.md in it or in a directory below it): run `cargo xtask lab` (or `--quick`) first, or pass --data DIR",
            data.display()
        );
    }
    util::say("train", "cargo build --release -p netguard-user");
    util::run(util::cargo().args(["build", "--release", "-p", "netguard-user"]))?;
    let bin = target.join("release/netguard");
    let mut cmd = Command::new(&bin);
    cmd.arg("train").arg("--data").arg(&data).args(&args.args);
    // From the workspace root, so the daemon's default model path lands inside the repository.
    cmd.current_dir(util::workspace_root());
    util::say("train", util::render(&cmd));
    util::run(&mut cmd)
}

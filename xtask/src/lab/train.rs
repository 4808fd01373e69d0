//! `cargo xtask train [-- args]`: builds the daemon and runs `netguard train --data DIR [args]` on the
//! lab's labelled data set. The training itself (model, metrics) belongs to the daemon's subcommand;
//! this only gets it built and started the same way every time.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::util;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// The labelled data set directory (default: target/lab-data, where `cargo xtask lab` writes).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Arguments passed on to `netguard train`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn cmd(args: &TrainArgs) -> Result<()> {
    let target = super::target_dir();
    let data = args.data.clone().unwrap_or_else(|| target.join("lab-data"));
    if !data.join("MANIFEST.md").exists() {
        bail!(
            "{} holds no lab data set (no MANIFEST.md): run `cargo xtask lab` (or `--quick`) first, or pass --data DIR",
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

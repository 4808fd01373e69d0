//! `cargo xtask build`: the toolchain setup, then a host build of the default members.

use anyhow::Result;

use crate::{setup, util};

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn cmd(args: &BuildArgs) -> Result<()> {
    // Building needs only the eBPF toolchain; lab tools (sshd, redis, ...) are for running and testing.
    setup::setup(false)?;
    let mut cargo = util::cargo();
    // Default members only, never --workspace: netguard-ebpf targets bpfel-unknown-none and cannot build
    // for the host; netguard-user's build.rs builds it for the kernel with aya-build.
    cargo.arg("build");
    if args.release {
        cargo.arg("--release");
    }
    util::say("build", "cargo build (default members)");
    util::run(&mut cargo)
}

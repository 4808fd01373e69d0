//! `cargo xtask bench`: setup, then the benchmark binary in the privileged test crate. The binary owns
//! its arguments and its report; this only gets it built and started the same way every time.

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Arguments passed to netguard-bench.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn cmd(args: &BenchArgs) -> Result<()> {
    setup::setup(true)?;
    util::say(
        "bench",
        "cargo run --release -p netguard-tests --bin netguard-bench",
    );
    let st = util::status(
        util::cargo()
            .args([
                "run",
                "--release",
                "-p",
                "netguard-tests",
                "--bin",
                "netguard-bench",
                "--",
            ])
            .args(&args.args),
    )?;
    if !st.success() {
        bail!("netguard-bench failed ({st})");
    }
    Ok(())
}

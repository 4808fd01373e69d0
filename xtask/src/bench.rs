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
    // The detection bench runs the real daemon, which `cargo run` of another binary does not build.
    util::say("bench", "cargo build --release -p netguard-user --bin netguard");
    util::run(util::cargo().args(["build", "--release", "-p", "netguard-user", "--bin", "netguard"]))?;
    // The datapath bench (ns/packet against a trivial program), then the control-plane bench (bulk
    // apply, block latency, WebSocket fan-out). Extra arguments go to the datapath bench.
    for (bin, extra) in [
        ("netguard-bench", args.args.as_slice()),
        ("netguard-bench-api", &[][..]),
        ("netguard-bench-detect", &[][..]),
        ("netguard-bench-authlog", &[][..]),
    ] {
        util::say(
            "bench",
            format!("cargo run --release -p netguard-tests --bin {bin}"),
        );
        let st = util::status(
            util::cargo()
                .args([
                    "run",
                    "--release",
                    "-p",
                    "netguard-tests",
                    "--bin",
                    bin,
                    "--",
                ])
                .args(extra),
        )?;
        if !st.success() {
            bail!("{bin} failed ({st})");
        }
    }
    Ok(())
}

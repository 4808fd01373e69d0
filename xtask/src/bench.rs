//! `cargo xtask bench`: setup, then the benchmark binary in the privileged test crate. The binary owns
//! its arguments and its report; this only gets it built and started the same way every time.

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Minutes of the benign soak that ends the bench (`cargo xtask lab --soak`); 0 skips it.
    #[arg(long, default_value_t = 10)]
    pub soak_minutes: u64,
    /// Arguments passed to netguard-bench.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn cmd(args: &BenchArgs) -> Result<()> {
    setup::setup(true)?;
    // The detection bench runs the real daemon, which `cargo run` of another binary does not build.
    util::say(
        "bench",
        "cargo build --release -p netguard-user --bin netguard",
    );
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "netguard-user",
        "--bin",
        "netguard",
    ]))?;
    // The datapath bench (ns/packet against a trivial program), then the control-plane bench (bulk
    // apply, block latency, WebSocket fan-out). Extra arguments go to the datapath bench.
    for (bin, extra) in [
        ("netguard-bench", args.args.as_slice()),
        ("netguard-bench-api", &[][..]),
        ("netguard-bench-detect", &[][..]),
        ("netguard-bench-authlog", &[][..]),
        // The console in Debian's chromium: alert-to-row latency, a 5,000-alert burst, first load.
        ("netguard-bench-console", &[][..]),
        ("netguard-bench-restart", &[][..]),
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
    // Last, the benign soak: everyday families interleaved against one daemon with blocking on;
    // every alert and block it reports is a false positive (goal: none).
    if args.soak_minutes > 0 {
        crate::lab::cmd(&crate::lab::LabArgs {
            quick: false,
            out: None,
            only: Vec::new(),
            list: false,
            no_setup: true,
            no_build: true,
            spoof_cap: 0,
            soak: Some(std::time::Duration::from_secs(60 * args.soak_minutes)),
            soak_seed: 1,
            soak_rounds: None,
            soak_expect_clean: false,
        })?;
    }
    Ok(())
}

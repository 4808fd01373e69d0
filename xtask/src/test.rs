//! `cargo xtask test`: the whole suite, in the order that gives the quickest useful answer: setup, lint
//! (rustfmt, clippy -D warnings), unit tests (no root), then the privileged integration tests that load XDP programs and drive real tools in
//! network namespaces. Test output streams as it comes; a summary of the stages closes the run.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Do not run `setup` first (the toolchain and lab tools must already be there).
    #[arg(long)]
    pub no_setup: bool,
    /// When not root, skip the privileged tests (loudly) instead of failing.
    #[arg(long)]
    pub unprivileged: bool,
    /// Extra arguments for the privileged test binary (after its own `--test-threads=2`).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

struct Stage {
    name: &'static str,
    outcome: Outcome,
    took: Option<Duration>,
}

pub fn cmd(args: &TestArgs) -> Result<()> {
    let mut stages = Vec::new();

    if args.no_setup {
        stages.push(Stage {
            name: "setup",
            outcome: Outcome::Skipped("--no-setup".into()),
            took: None,
        });
    } else {
        let (r, took) = util::timed(|| setup::setup(true));
        let failed = r.is_err();
        stages.push(Stage {
            name: "setup",
            outcome: outcome_of(r),
            took: Some(took),
        });
        if failed {
            // Nothing after setup can build without its toolchain; stop with its error in view.
            return finish(&stages);
        }
    }

    // Lint: formatting and clippy with warnings as errors, as aya enforces workspace-wide. A failure
    // is reported with the rest; the tests still run, so one red run shows everything.
    util::say("test", "lint: cargo fmt --check, cargo clippy -D warnings");
    let (r, took) = util::timed(|| {
        util::run(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
        util::run(util::cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "netguard-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    stages.push(Stage {
        name: "lint",
        outcome: outcome_of(r),
        took: Some(took),
    });

    // Unit tests: every workspace crate except the kernel crate (it cannot build for the host) and the
    // privileged crate. --workspace rather than a -p list, so crates added later are picked up.
    util::say("test", "unit tests (no root needed)");
    let (r, took) = util::timed(|| {
        util::run(util::cargo().args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "netguard-ebpf",
            "--exclude",
            "netguard-tests",
        ]))
    });
    stages.push(Stage {
        name: "unit tests",
        outcome: outcome_of(r),
        took: Some(took),
    });

    // Privileged integration tests run even when unit tests failed, and `--no-fail-fast` runs every
    // test binary after a failing one: CI's single run should show every failure, not just the first.
    if util::is_root() {
        util::say(
            "test",
            "privileged integration tests (netguard-tests, 2 threads)",
        );
        let (r, took) = util::timed(|| {
            // The CLI tests run the real `netguard` binary, which `cargo test -p netguard-tests` does
            // not build (it only links the library).
            util::run(util::cargo().args(["build", "-p", "netguard-user", "--bin", "netguard"]))?;
            util::run(
                util::cargo()
                    .args([
                        "test",
                        "--no-fail-fast",
                        "-p",
                        "netguard-tests",
                        "--",
                        "--test-threads=2",
                    ])
                    .args(&args.extra),
            )
        });
        stages.push(Stage {
            name: "privileged tests",
            outcome: outcome_of(r),
            took: Some(took),
        });
        // Every benign lab family once, interleaved, against one daemon with blocking on and the
        // shipped model: any alert or block fails the stage (trust rules: never block an innocent).
        util::say(
            "test",
            "benign families against the real daemon (cargo xtask lab --soak, one round)",
        );
        let (r, took) = util::timed(|| {
            crate::lab::cmd(&crate::lab::LabArgs {
                quick: false,
                out: None,
                only: Vec::new(),
                list: false,
                no_setup: true,
                no_build: false,
                spoof_cap: 0,
                soak: Some(Duration::from_secs(40 * 60)),
                soak_seed: 1,
                soak_rounds: Some(1),
                soak_expect_clean: true,
            })
        });
        stages.push(Stage {
            name: "benign families",
            outcome: outcome_of(r),
            took: Some(took),
        });
    } else {
        let why = "not root: loading XDP programs, creating network namespaces and running sshd/hping3 \
                   need root (euid 0), and there is no sudo; rerun as root";
        let outcome = if args.unprivileged {
            println!();
            println!("!!!!!!!! SKIPPED privileged tests: not root (--unprivileged) !!!!!!!!");
            println!();
            Outcome::Skipped("not root (--unprivileged)".into())
        } else {
            eprintln!("error: cannot run the privileged tests: {why}");
            eprintln!("       (pass --unprivileged to skip them on purpose)");
            Outcome::Failed(why.into())
        };
        stages.push(Stage {
            name: "privileged tests",
            outcome,
            took: None,
        });
    }

    finish(&stages)
}

fn outcome_of(r: Result<()>) -> Outcome {
    match r {
        Ok(()) => Outcome::Passed,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// Prints the stage table and turns any failed stage into a non-zero exit.
fn finish(stages: &[Stage]) -> Result<()> {
    println!();
    util::say("test", "summary");
    for s in stages {
        let took = s.took.map(util::secs).unwrap_or_else(|| "-".into());
        let (word, note) = match &s.outcome {
            Outcome::Passed => ("ok", String::new()),
            Outcome::Failed(why) => ("FAILED", why.clone()),
            Outcome::Skipped(why) => ("SKIPPED", why.clone()),
        };
        println!("    {:<18} {:<8} {:>8}  {}", s.name, word, took, note);
    }
    let failed: Vec<&str> = stages
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
        .map(|s| s.name)
        .collect();
    if failed.is_empty() {
        println!("    all stages that ran succeeded");
        Ok(())
    } else {
        bail!("failed stage(s): {}", failed.join(", "))
    }
}

//! Developer and operator entry points for NetGuard: `cargo xtask setup|build|run|test|bench|lab|train|install|uninstall`.
//! One module per subcommand; `util` holds the shared command-running and step-printing helpers.

mod bench;
mod build;
mod forward;
mod install;
mod lab;
mod netns;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "NetGuard developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install what is missing: LLVM 22, rust-src, bpf-linker, and the lab/test tools.
    Setup(setup::SetupArgs),
    /// Setup, then build the default workspace members.
    Build(build::BuildArgs),
    /// Run netguard on an interface, or without --iface a demo lab in its own network namespaces.
    Run(run::RunArgs),
    /// Setup, unit tests, then the privileged integration tests (root).
    Test(test::TestArgs),
    /// Setup, then the netguard-bench benchmark binary.
    Bench(bench::BenchArgs),
    /// Make a labelled data set: real attack and benign tools in network namespaces, NetGuard recording.
    Lab(lab::LabArgs),
    /// Run `netguard train` on the lab's data set (target/lab-data by default).
    Train(lab::train::TrainArgs),
    /// Install netguard as a system service: binary, sample config, hardened systemd unit.
    Install(install::InstallArgs),
    /// Remove what `install` put in place (and, with --purge, the state).
    Uninstall(install::UninstallArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    put_cargo_bin_on_path();
    let result = match &cli.cmd {
        Cmd::Setup(a) => setup::cmd(a),
        Cmd::Build(a) => build::cmd(a),
        Cmd::Run(a) => run::cmd(a),
        Cmd::Test(a) => test::cmd(a),
        Cmd::Bench(a) => bench::cmd(a),
        Cmd::Lab(a) => lab::cmd(a),
        Cmd::Train(a) => lab::train::cmd(a),
        Cmd::Install(a) => install::install(a),
        Cmd::Uninstall(a) => install::uninstall(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One cause per line: the outermost says which step failed and what to try.
            eprintln!("\nerror: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `cargo install` puts bpf-linker in $CARGO_HOME/bin, and aya-build finds it through PATH. A shell where
/// that directory is not on PATH (CI images, `su -`) would otherwise install it and then fail to use it.
fn put_cargo_bin_on_path() {
    let Some(bin) = util::cargo_bin_dir() else {
        return;
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let new = util::path_with_prefix(&bin);
    // SAFETY: called at the start of main, before any thread is spawned, so no one reads the
    // environment concurrently.
    unsafe { std::env::set_var("PATH", new) };
}

//! `netguard`: the NetGuard sensor daemon and its command-line client.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use netguard_user::datapath::AttachMode;

mod run;

#[derive(Parser)]
#[command(name = "netguard", version, about = "XDP network security sensor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program on an interface and run the sensor until SIGINT/SIGTERM.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interface to protect (XDP sees its ingress traffic).
    #[arg(long)]
    iface: String,
    /// XDP attach mode: native driver mode, generic skb mode, or auto (driver, else skb).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// TOML config file ([datapath] map sizes, [api], [store], [control]).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the REST/WebSocket/metrics server. Loopback by default: expose it deliberately.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Redis URL (e.g. redis://127.0.0.1:6379/0) for a store shared by a fleet of sensors. Without it,
    /// state lives in the embedded store under --state-dir.
    #[arg(long)]
    redis: Option<String>,
    /// Directory for the embedded store and the generated admin token.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This sensor's id in a fleet (blocklist scope); defaults to the host name.
    #[arg(long)]
    sensor_id: Option<String>,
    /// Seconds between live summary lines.
    #[arg(long, default_value_t = 2)]
    summary_every: u64,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
    }
}

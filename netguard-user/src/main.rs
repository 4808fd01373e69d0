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
    /// Add, remove or list blocklist entries of a running daemon (a REST client).
    Block {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: BlockCmd,
    },
    /// Remove NetGuard's XDP program and pinned state from an interface (refused while a daemon runs
    /// on it). `netguard run` leaves them attached and enforcing when it exits.
    Detach {
        /// Interface to release.
        #[arg(long)]
        iface: String,
        /// The bpffs the daemon pinned its state under (`netguard run --bpffs`).
        #[arg(long, default_value = netguard_user::datapath::pin::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Show a running daemon's health: datapath, store, entries, WebSocket clients.
    Status(ApiArgs),
    /// Fit the detection model on a labelled data set and print per-class precision, recall and F1.
    Train(netguard_user::train::TrainArgs),
}

/// Where the REST API is and how to authenticate to it.
#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of the daemon's API.
    #[arg(long, global = true, env = "NETGUARD_API", default_value = netguard_user::client::DEFAULT_API)]
    api: String,
    /// The daemon's state dir, to read its generated admin token when NETGUARD_TOKEN is not set.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// PEM file of the CA that signed the API's certificate (a private CA), for `--api https://...`;
    /// without it the system's trusted roots are used.
    #[arg(long, global = true, env = "NETGUARD_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BlockCmd {
    /// Block a CIDR or address (a bare address means /32 or /128).
    Add {
        cidr: String,
        /// Lifetime, e.g. 90s, 4h, 7d; permanent without it.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// `global` (every sensor sharing the store) or one sensor's id.
        #[arg(long)]
        scope: Option<String>,
        /// Required to block 0.0.0.0/0 or ::/0.
        #[arg(long)]
        force: bool,
    },
    /// Remove a blocklist entry (idempotent).
    Del {
        cidr: String,
        /// Only the entry of this scope; default: every scope.
        #[arg(long)]
        scope: Option<String>,
    },
    /// List the blocklist.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
    /// Redis URL (e.g. redis://127.0.0.1:6379/0, or rediss:// for TLS) for a store shared by a fleet
    /// of sensors. Without it, state lives in the embedded store under --state-dir. A URL with a
    /// password is visible in `ps` here: use NETGUARD_REDIS_URL or --redis-url-file instead.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// File whose first line is the Redis URL (keeps a password off the command line; chmod 600).
    #[arg(long, value_name = "FILE")]
    redis_url_file: Option<PathBuf>,
    /// PEM file of the CA that signed the rediss:// server's certificate (also `redis_ca` under
    /// [store]); default: the system's roots.
    #[arg(long, value_name = "FILE")]
    redis_ca: Option<PathBuf>,
    /// Directory for the embedded store and the generated admin token.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This sensor's id in a fleet (blocklist scope); defaults to the host name.
    #[arg(long)]
    sensor_id: Option<String>,
    /// Decision-tree model file (default: the model embedded in the binary, trained by `cargo xtask train`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Detect and alert, but never block automatically.
    #[arg(long)]
    dry_run: bool,
    /// Write every closed window's feature vector to this CSV file (what `cargo xtask lab` records).
    #[arg(long)]
    record_features: Option<PathBuf>,
    /// sshd log to follow for failed logins (like `tail -F`, surviving rotation); default
    /// /var/log/auth.log when it exists.
    #[arg(long)]
    auth_log: Option<PathBuf>,
    /// Read the auth log from its start instead of its end (only when no position was saved).
    #[arg(long)]
    auth_log_from_start: bool,
    /// Which lines of the auth log are believed: `sshd-e` (only the bare lines of a file that
    /// `sshd -E FILE` writes itself), `syslog` (only timestamped sshd lines; bare lines are
    /// ignored), or `auto` (the first line read decides). See README: a syslog file cannot prove
    /// which program wrote a line.
    #[arg(long, value_enum, default_value_t = netguard_user::hostevents::AuthLogFormat::Auto)]
    auth_log_format: netguard_user::hostevents::AuthLogFormat,
    /// MaxMind GeoLite2-City or GeoLite2-Country .mmdb file for GET /api/v1/geo-attacks (also
    /// `geoip_db` under [api] in the config file); checked at start.
    #[arg(long, value_name = "PATH")]
    geoip_db: Option<PathBuf>,
    /// bpffs to pin the link, program and maps under (in `netguard/<iface>/`), so the kernel keeps
    /// enforcing across restarts. Inside `ip netns exec`, /sys/fs/bpf is not a bpffs: mount one
    /// outside /sys in the host's mount namespace (e.g. /run/netguard/bpffs) and pass it here.
    #[arg(long, default_value = netguard_user::datapath::pin::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Attach through netlink instead of a bpf_link (what netguard falls back to by itself where a
    /// driver has no bpf_link); restarts then swap with XDP_FLAGS_REPLACE and the expected program.
    #[arg(long)]
    xdp_netlink: bool,
    /// Remove the program and the pins on exit (default: leave them attached and enforcing).
    #[arg(long)]
    detach_on_exit: bool,
    /// `text` or `json` (one object per line: timestamp, level, target, fields, and the API
    /// request's id); also `log_format` in the config file.
    #[arg(long, value_enum)]
    log_format: Option<netguard_user::logging::LogFormat>,
    /// Seconds between live summary lines.
    #[arg(long, default_value_t = 2)]
    summary_every: u64,
}

/// A build-time constant that tells builds of the same sources apart (the restart tests replace
/// the daemon with a binary built with `NETGUARD_BUILD_VARIANT=upgrade-test`).
const BUILD_VARIANT: Option<&str> = option_env!("NETGUARD_BUILD_VARIANT");

/// `--log-format`, else the config file's `log_format`, else text.
fn log_format(cli: &Cli) -> netguard_user::logging::LogFormat {
    let Command::Run(args) = &cli.command else {
        return Default::default();
    };
    if let Some(f) = args.log_format {
        return f;
    }
    // A config that does not load is reported by `run` itself, in the default format.
    args.config
        .as_deref()
        .and_then(|p| netguard_user::config::Config::load(p).ok())
        .map(|c| c.log_format)
        .unwrap_or_default()
}

fn main() {
    let cli = Cli::parse();
    netguard_user::logging::init(log_format(&cli));
    if let (Some(v), Command::Run(_)) = (BUILD_VARIANT, &cli.command) {
        log::info!("netguard {} build variant {v}", env!("CARGO_PKG_VERSION"));
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Block { api, cmd } => client_command(&api, Some(cmd)),
        Command::Detach { iface, bpffs } => detach(&iface, &bpffs),
        Command::Status(api) => client_command(&api, None),
        Command::Train(args) => netguard_user::train::run(&args)
            .map(|_| ())
            .map_err(Into::into),
    };
    if let Err(e) = result {
        // As `main() -> Result` would print it, but a Redis URL anywhere in the chain loses its password.
        eprintln!(
            "Error: {}",
            netguard_store::url::redact_text(&format!("{e:?}"))
        );
        std::process::exit(1);
    }
}

/// `netguard detach`: the program and every pin of `iface` go; the interface is left as it was.
fn detach(iface: &str, bpffs: &std::path::Path) -> Result<()> {
    let n = netguard_user::datapath::Datapath::detach_pinned(bpffs, iface)?;
    if n == 0 {
        println!(
            "nothing of NetGuard's is pinned for {iface} under {}",
            bpffs.display()
        );
    } else {
        println!("detached from {iface}: removed the program, the link and {n} pin(s)");
    }
    Ok(())
}

/// Runs a REST client command; an API error prints the server's message and field and exits 1.
fn client_command(args: &ApiArgs, block: Option<BlockCmd>) -> Result<()> {
    use netguard_user::{client, control::EntryRequest};
    let token = client::find_token(args.state_dir.as_deref());
    let c = match client::Client::with_ca(&args.api, token, args.cacert.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result: Result<bool, client::ClientError> = rt.block_on(async {
        match block {
            Some(BlockCmd::Add {
                cidr,
                ttl,
                reason,
                scope,
                force,
            }) => {
                let out = c
                    .block_add(&EntryRequest {
                        cidr,
                        ttl,
                        reason,
                        scope,
                        force,
                    })
                    .await?;
                for e in &out.entries {
                    let until = e
                        .expires_at
                        .map_or_else(|| "permanently".to_owned(), |t| format!("until {t}"));
                    println!(
                        "{}",
                        client::terminal_safe(
                            &format!("blocked {} (scope {}) {until}", e.cidr, e.scope),
                            false
                        )
                    );
                }
                Ok(true)
            }
            Some(BlockCmd::Del { cidr, scope }) => {
                let out = c.block_del(&cidr, scope.as_deref()).await?;
                match out.removed {
                    0 => println!("{} was not blocked", client::terminal_safe(&cidr, false)),
                    n => println!(
                        "unblocked {} ({n} entr{})",
                        client::terminal_safe(&cidr, false),
                        if n == 1 { "y" } else { "ies" }
                    ),
                }
                Ok(true)
            }
            Some(BlockCmd::List { json }) => {
                let entries = c.block_list().await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&entries).unwrap_or_default()
                    );
                } else {
                    println!("{}", client::entries_table(&entries, chrono::Utc::now()));
                }
                Ok(true)
            }
            None => {
                let h = c.health().await?;
                println!("{}", client::health_text(&h));
                Ok(h.status == "ok")
            }
        }
    });
    match result {
        Ok(true) => Ok(()),
        // `status` of a degraded daemon: printed above, and a non-zero exit for scripts.
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {}", client::terminal_safe(&e.to_string(), true));
            std::process::exit(1);
        }
    }
}

//! Log output: `text` (env_logger's lines, as before) or `json` (tracing-subscriber: one object per
//! line with `timestamp`, `level`, `target`, `fields`, and the `span` a line was logged in, which
//! for the API carries the request id). `RUST_LOG` filters both.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the process's logger. Call once, first thing.
pub fn init(format: LogFormat) {
    match format {
        LogFormat::Text => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
        }
        LogFormat::Json => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // `log` records (most of the daemon) become tracing events through the LogTracer
            // that `init` installs, so they carry the current span too.
            use tracing_subscriber::util::SubscriberInitExt as _;
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::stderr)
                .finish()
                .init();
        }
    }
}

//! Detection: per-source feature windows built from the kernel's flow counters, a decision tree trained
//! on lab traffic, threshold rules beside it, and the response (alerts and auto-blocks) they lead to.
//!
//! Data flow in the daemon, once per tick:
//!
//! ```text
//! Datapath::flows() ──► Extractor::observe_flows ─┐
//! host events ────────► Extractor::observe_failed_auth
//!                       Extractor::close_window ──► Vec<FeatureVector> ──► Detector::evaluate ──► Vec<Decision>
//!                                                   └─► record_row (netguard run --record-features)
//! ```
//!
//! Training and serving share one feature schema ([`FEATURES`], [`SCHEMA_VERSION`]): the lab records the
//! vectors that this very code computes, `netguard train` fits on them, and a model file names the schema
//! it was fitted on so a daemon never feeds it vectors whose columns mean something else.

mod bucket;
mod config;
mod engine;
pub mod evidence;
mod features;
mod fit;
mod flows;
mod model;
mod record;
mod rules;
mod sketch;
mod windows;

#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

pub use config::{BlockScope, ClassPolicy, DetectConfig, ExtractorConfig, ResponseConfig};
pub use engine::{BlockDecision, Decision, Detector, Rejected};
pub use evidence::{Contradiction, EvidenceConfig, Fact, check as check_evidence};
pub use features::{F, FEATURES, FeatureVector, SCHEMA_VERSION, feature_index};
pub use fit::{
    ClassMetrics, DataSummary, TrainParams, TrainReport, cap_per_class, evaluate as evaluate_model,
    fit as fit_model, stratified_split,
};
pub use flows::mono_coarse_now_ns;
pub use model::{MODEL_FORMAT, Model, Node, Prediction, Tree, bench_predict};
pub use record::{Dataset, RECORD_MAGIC, read_dataset, record_row, write_record_header};
pub(crate) use rules::compile as compile_rules;
pub use rules::{RULE_CLASSES, RulesConfig, ThresholdRule};
pub use windows::{Extractor, ExtractorStats, OVERFLOW_SRC};

/// Output classes, in the order the model's class indices use. `benign` is never alerted.
pub const CLASSES: &[&str] = &[
    "benign",
    "syn_flood",
    "udp_flood",
    "icmp_flood",
    "port_scan",
    "ssh_brute_force",
];

/// Index of a class name in [`CLASSES`].
pub fn class_index(name: &str) -> Option<usize> {
    CLASSES.iter().position(|c| *c == name)
}

/// MITRE ATT&CK technique of an alert class (DESIGN.md). SYN floods exhaust the target's connection
/// table (Endpoint DoS, T1499); UDP and ICMP floods exhaust bandwidth (Network DoS, T1498).
pub fn mitre(class: &str) -> &'static str {
    match class {
        "syn_flood" => "T1499",
        "udp_flood" | "icmp_flood" => "T1498",
        "port_scan" => "T1046",
        "ssh_brute_force" | "brute_force" => "T1110",
        _ => "",
    }
}

/// Everything that can go wrong loading models and data sets or validating detection config. Each
/// message names the file (and line) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(
        "model {path} was trained on feature schema v{found}, but this netguard computes schema v{expected}; \
         retrain it with `cargo xtask train` (or `netguard train --data DIR --out {path}`)"
    )]
    SchemaMismatch {
        path: String,
        found: u32,
        expected: u32,
    },
    #[error(
        "model {path} does not match this netguard's features/classes ({detail}); retrain it with `cargo xtask train`"
    )]
    ModelMismatch { path: String, detail: String },
    #[error("model {path} is corrupt: {detail}")]
    ModelCorrupt { path: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a netguard model: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: recorded with feature schema v{found}, but this netguard uses v{expected}; \
         re-record it (`cargo xtask lab`) with this version"
    )]
    DataSchema {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("{path}:{line}: {detail}")]
    DataRow {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("no usable rows under {dir}: {detail}")]
    NoData { dir: PathBuf, detail: String },
    #[error("training failed: {0}")]
    Fit(String),
    #[error("detect config: {field}: {detail}")]
    Config { field: String, detail: String },
}

/// Durations in the config file are humantime strings ("90s", "4h"), as elsewhere in netguard.
pub(crate) mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!("`{s}`: {e} (use e.g. \"90s\", \"10m\", \"4h\")"))
        })
    }
}

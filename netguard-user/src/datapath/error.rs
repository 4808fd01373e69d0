//! The datapath's error type. Messages say what failed and what the operator can do about it.
//!
//! aya's errors are large (verifier logs, paths); they are boxed so that every `Result` carrying a
//! `DatapathError` stays small on the happy path.

use aya::{EbpfError, maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the XDP object failed: {source}{hint}")]
    Load {
        #[source]
        source: Box<EbpfError>,
        hint: &'static str,
    },
    #[error("the kernel refused program `{program}`: {source}{hint}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
        hint: &'static str,
    },
    #[error(
        "map `{0}` is missing from the XDP object (netguard-ebpf and netguard-user are out of sync; rebuild)"
    )]
    MissingMap(&'static str),
    #[error("map `{map}` has an unexpected type or layout: {source}")]
    MapType {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("{op} on map `{map}` failed ({detail}): {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        detail: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("{op} on map `{map}` failed after {applied} elements: {source}")]
    Syscall {
        op: &'static str,
        map: &'static str,
        applied: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{table} {family} is full: {have} entries + {adding} new > max {max}; nothing was inserted. \
         Raise `datapath.{table}_{family}_max` in the config"
    )]
    TableFull {
        table: &'static str,
        family: String,
        max: u32,
        have: usize,
        adding: usize,
    },
    #[error(
        "interface `{0}` does not exist here; list interfaces with `ip link` (inside a netns: `ip netns exec NS ip link`)"
    )]
    NoSuchInterface(String),
    #[error("attaching XDP to `{iface}` in {mode} mode was refused: {source}. {hint}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: Box<ProgramError>,
        hint: &'static str,
    },
    #[error("the XDP program is not attached")]
    NotAttached,
    #[error("{what}{}{hint}", if hint.is_empty() { "" } else { ". Fix: " })]
    Pin { what: String, hint: String },
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] Box<ProgramError>),
}

/// Appended to load errors caused by missing privileges.
pub(crate) const PRIV_HINT: &str = ". Loading XDP programs needs root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON): run netguard as root";

//! The conformance suite, written once and run against every backend (see `conformance.rs`).
//! Each function states one part of the `Store` contract that the daemon relies on.

mod entries;
mod state;

pub use entries::{bulk_atomicity, entry_crud, ttl_expiry};
pub use state::{alerts, counters, kv, persistence, ping_and_name, sensors};

//! The conformance suite, written once and run against every backend (see `conformance.rs`).
//! Each function states one part of the `Store` contract that the daemon relies on.

mod entries;
mod events;
mod state;

pub use entries::{bulk_atomicity, entry_crud, ttl_expiry};
pub use events::{
    event_cap, event_dedup_concurrent, event_dedup_within_retention, event_fingerprint_cap,
    event_query, event_reaccept_after_retention,
};
pub use state::{alerts, counters, kv, persistence, ping_and_name, sensors};

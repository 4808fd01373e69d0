//! One conformance suite (`support/suite.rs`), run against every backend. A backend is done when
//! every line of this file passes for it.

mod support;

use support::{EmbeddedHarness, RedisHarness, suite};

/// Instantiates each suite function once per backend, so a failure names both.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    suite::$case(&EmbeddedHarness::new()).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    suite::$case(&RedisHarness::start()).await;
                }
            )*
        }
    };
}

conformance!(
    entry_crud,
    bulk_atomicity,
    ttl_expiry,
    alerts,
    sensors,
    kv,
    counters,
    persistence,
    ping_and_name,
    event_dedup_within_retention,
    event_reaccept_after_retention,
    event_dedup_concurrent,
    event_query,
    event_cap,
    event_fingerprint_cap,
);

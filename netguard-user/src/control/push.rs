//! What the WebSocket pushes: every alert and every list change, as one JSON object each, tagged by
//! `type` ("alert", "block", "unblock", "allow", "unallow").

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_store::{Alert, EntrySource, ListEntry, ListKind, Scope};
use serde::Serialize;

/// Bulk changes list at most this many entries in one push message; `count` always has the total, and
/// clients that need the rest read the list over REST.
pub const MAX_PUSHED_ENTRIES: usize = 10_000;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PushEvent {
    Alert(Alert),
    /// Entries added to (or replaced in) the blocklist.
    Block(Change),
    /// Entries removed from the blocklist, by a user or by expiry.
    Unblock(Removal),
    Allow(Change),
    Unallow(Removal),
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Change {
    pub count: usize,
    pub truncated: bool,
    pub entries: Vec<ListEntry>,
    pub source: EntrySource,
    pub ts: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Removal {
    #[schema(value_type = String)]
    pub cidr: IpNet,
    #[schema(value_type = String)]
    pub scope: Scope,
    /// "removed", "expired", or "fleet" (removed on another sensor).
    pub reason: &'static str,
    pub ts: DateTime<Utc>,
}

impl PushEvent {
    pub fn change(kind: ListKind, entries: &[ListEntry], source: EntrySource) -> Self {
        let c = Change {
            count: entries.len(),
            truncated: entries.len() > MAX_PUSHED_ENTRIES,
            entries: entries.iter().take(MAX_PUSHED_ENTRIES).cloned().collect(),
            source,
            ts: Utc::now(),
        };
        match kind {
            ListKind::Block => PushEvent::Block(c),
            ListKind::Allow => PushEvent::Allow(c),
        }
    }

    pub fn removal(kind: ListKind, cidr: IpNet, scope: Scope, reason: &'static str) -> Self {
        let r = Removal {
            cidr,
            scope,
            reason,
            ts: Utc::now(),
        };
        match kind {
            ListKind::Block => PushEvent::Unblock(r),
            ListKind::Allow => PushEvent::Unallow(r),
        }
    }
}

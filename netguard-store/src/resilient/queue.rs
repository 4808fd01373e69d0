//! What is queued during an outage: the writes, their classes and caps, the two queues, and the
//! local memory of event fingerprints that answers "new or duplicate" meanwhile.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::Store;
use crate::error::Result;
use crate::types::{Alert, HostEventRecord, ListEntry, ListKind, Scope, Sensor};

/// A write, owned so it can wait in the queue; serialisable so that what is still queued at
/// shutdown can be kept on disk and replayed at the next start ([`Store::take_queued`],
/// [`replay`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuedWrite {
    PutEntries(ListKind, Vec<ListEntry>),
    RemoveEntry(ListKind, IpNet, Scope),
    AppendAlert(Box<Alert>),
    PutSensor(Sensor),
    RemoveSensor(String),
    KvPut(String, Vec<u8>),
    IncrCounter(String, u64),
    RecordEvents(Vec<HostEventRecord>, Duration),
}

pub(super) use QueuedWrite as Op;

impl QueuedWrite {
    /// Which queue and cap the write belongs to.
    pub fn class(&self) -> WriteClass {
        match self {
            Op::PutEntries(..) | Op::RemoveEntry(..) => WriteClass::Lists,
            Op::AppendAlert(_) => WriteClass::Alerts,
            Op::RecordEvents(..) => WriteClass::Events,
            _ => WriteClass::Other,
        }
    }

    /// What kind of write this is, for the shutdown log ("what could not be written").
    pub fn kind(&self) -> &'static str {
        match self {
            Op::PutEntries(ListKind::Block, _) => "blocklist puts",
            Op::PutEntries(ListKind::Allow, _) => "allowlist puts",
            Op::RemoveEntry(ListKind::Block, ..) => "blocklist removals",
            Op::RemoveEntry(ListKind::Allow, ..) => "allowlist removals",
            Op::AppendAlert(_) => "alerts",
            Op::PutSensor(_) => "sensor updates",
            Op::RemoveSensor(_) => "sensor removals",
            Op::KvPut(..) => "key/value puts (auth-log position)",
            Op::IncrCounter(..) => "counter increments",
            Op::RecordEvents(..) => "host-event batches",
        }
    }
}

/// The kinds of queued writes that have a cap of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WriteClass {
    /// Blocklist and allowlist puts and removals: replayed first.
    Lists,
    Alerts,
    Events,
    Other,
}

impl WriteClass {
    pub const ALL: [WriteClass; 4] = [Self::Lists, Self::Alerts, Self::Events, Self::Other];

    /// Label for metrics and `/health`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Lists => "lists",
            Self::Alerts => "alerts",
            Self::Events => "events",
            Self::Other => "other",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Counts per [`QueuedWrite::kind`], e.g. "2 blocklist puts, 1 alerts".
pub fn describe(writes: &[QueuedWrite]) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for w in writes {
        *counts.entry(w.kind()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    parts.join(", ")
}

/// Applies writes to `store` in order (through its own queue, if it has one). Every write is
/// idempotent or at-least-once (see the module docs), so replaying one that had in fact reached
/// the backend does no harm. Stops at the first error.
pub async fn replay(store: &dyn Store, writes: &[QueuedWrite]) -> Result<()> {
    for w in writes {
        apply(store, w).await?;
    }
    Ok(())
}

/// What a write returned, or that it was queued.
pub(super) enum Applied {
    Unit,
    Bool(bool),
    Count(u64),
    Flags(Vec<bool>),
    Queued,
}

pub(super) async fn apply<S: Store + ?Sized>(store: &S, op: &Op) -> Result<Applied> {
    Ok(match op {
        Op::PutEntries(kind, entries) => {
            store.put_entries(*kind, entries).await?;
            Applied::Unit
        }
        Op::RemoveEntry(kind, cidr, scope) => {
            Applied::Bool(store.remove_entry(*kind, cidr, scope).await?)
        }
        Op::AppendAlert(alert) => {
            store.append_alert(alert).await?;
            Applied::Unit
        }
        Op::PutSensor(sensor) => {
            store.put_sensor(sensor).await?;
            Applied::Unit
        }
        Op::RemoveSensor(id) => Applied::Bool(store.remove_sensor(id).await?),
        Op::KvPut(key, value) => {
            store.kv_put(key, value).await?;
            Applied::Unit
        }
        Op::IncrCounter(name, by) => Applied::Count(store.incr_counter(name, *by).await?),
        Op::RecordEvents(events, retention) => {
            Applied::Flags(store.record_events(events, *retention).await?)
        }
    })
}

/// Fingerprints remembered locally for answering `record_events` while writes are queued.
pub(super) const FINGERPRINT_MEMORY: usize = 200_000;

/// A bounded map of fingerprint to the end of its retention; the oldest insertions go first.
#[derive(Default)]
pub(super) struct Fingerprints {
    until: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Fingerprints {
    pub(super) fn is_live(&self, fp: &str, now: Instant) -> bool {
        self.until.get(fp).is_some_and(|t| *t > now)
    }

    pub(super) fn remember(&mut self, fp: &str, until: Instant) {
        self.until.insert(fp.to_owned(), until);
        self.order.push_back((until, fp.to_owned()));
        while self.order.len() > FINGERPRINT_MEMORY {
            if let Some((t, old)) = self.order.pop_front()
                && self.until.get(&old) == Some(&t)
            {
                self.until.remove(&old);
            }
        }
    }
}

/// The two queues (see the module docs): list changes, then everything else.
#[derive(Default)]
pub(super) struct Queues {
    lists: VecDeque<Op>,
    rest: VecDeque<Op>,
    /// Queued writes per [`WriteClass`].
    pub(super) counts: [usize; 4],
}

impl Queues {
    pub(super) fn len(&self) -> usize {
        self.lists.len() + self.rest.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn of(&mut self, class: WriteClass) -> &mut VecDeque<Op> {
        match class {
            WriteClass::Lists => &mut self.lists,
            _ => &mut self.rest,
        }
    }

    pub(super) fn push(&mut self, op: Op) {
        let class = op.class();
        self.counts[class.index()] += 1;
        self.of(class).push_back(op);
    }

    /// The next write to replay: list changes first.
    pub(super) fn front(&self) -> Option<&Op> {
        self.lists.front().or_else(|| self.rest.front())
    }

    pub(super) fn pop_front(&mut self) -> Option<Op> {
        let op = self.lists.pop_front().or_else(|| self.rest.pop_front())?;
        self.counts[op.class().index()] -= 1;
        Some(op)
    }
}

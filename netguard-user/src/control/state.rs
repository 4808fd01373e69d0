//! The in-memory mirror of the stored lists, with an index by expiry.
//!
//! The mirror is what this sensor enforces: the kernel holds exactly the CIDRs of mirror entries whose
//! scope applies here (global, or this sensor's id). Keeping it in memory lets expiry fire on a timer
//! set for the earliest deadline, and keeps enforcement decisions independent of the store's
//! availability.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use netguard_store::{ListEntry, ListKind, Scope};

pub type Key = (IpNet, Scope);

#[derive(Default)]
pub struct Mirror {
    block: BTreeMap<Key, ListEntry>,
    allow: BTreeMap<Key, ListEntry>,
    expiry: BTreeSet<(DateTime<Utc>, ListKind, IpNet, Scope)>,
}

impl Mirror {
    pub fn list(&self, kind: ListKind) -> &BTreeMap<Key, ListEntry> {
        match kind {
            ListKind::Block => &self.block,
            ListKind::Allow => &self.allow,
        }
    }

    fn list_mut(&mut self, kind: ListKind) -> &mut BTreeMap<Key, ListEntry> {
        match kind {
            ListKind::Block => &mut self.block,
            ListKind::Allow => &mut self.allow,
        }
    }

    /// Inserts or replaces an entry; returns the entry it replaced.
    pub fn put(&mut self, kind: ListKind, entry: ListEntry) -> Option<ListEntry> {
        let key = (entry.cidr, entry.scope.clone());
        let old = self.list_mut(kind).remove(&key);
        if let Some(o) = &old {
            self.unindex(kind, o);
        }
        if let Some(at) = entry.expires_at {
            self.expiry.insert((at, kind, entry.cidr, entry.scope.clone()));
        }
        self.list_mut(kind).insert(key, entry);
        old
    }

    fn unindex(&mut self, kind: ListKind, e: &ListEntry) {
        if let Some(at) = e.expires_at {
            self.expiry.remove(&(at, kind, e.cidr, e.scope.clone()));
        }
    }

    pub fn remove(&mut self, kind: ListKind, cidr: &IpNet, scope: &Scope) -> Option<ListEntry> {
        let old = self.list_mut(kind).remove(&(*cidr, scope.clone()))?;
        self.unindex(kind, &old);
        Some(old)
    }

    /// Scopes under which `cidr` is an entry.
    pub fn scopes_of(&self, kind: ListKind, cidr: &IpNet) -> Vec<Scope> {
        self.list(kind)
            .range((*cidr, Scope::Global)..)
            .take_while(|((c, _), _)| c == cidr)
            .map(|((_, s), _)| s.clone())
            .collect()
    }

    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.expiry.first().map(|(at, ..)| *at)
    }

    /// Removes and returns every entry whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: DateTime<Utc>) -> Vec<(ListKind, ListEntry)> {
        let mut out = Vec::new();
        while let Some((at, kind, cidr, scope)) = self.expiry.first().cloned() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(e) = self.list_mut(kind).remove(&(cidr, scope)) {
                out.push((kind, e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cidr: &str, scope: Scope, exp: Option<i64>) -> ListEntry {
        let mut e = ListEntry::new(cidr.parse().unwrap(), scope);
        e.expires_at = exp.map(|s| DateTime::from_timestamp(s, 0).unwrap());
        e
    }

    #[test]
    fn expiry_order_and_replacement() {
        let mut m = Mirror::default();
        m.put(ListKind::Block, entry("10.0.0.0/24", Scope::Global, Some(300)));
        m.put(ListKind::Block, entry("10.0.1.0/24", Scope::Global, Some(100)));
        m.put(ListKind::Allow, entry("10.0.2.0/24", Scope::Global, None));
        assert_eq!(m.next_expiry().unwrap().timestamp(), 100);
        // Replacing an entry moves its deadline.
        m.put(ListKind::Block, entry("10.0.1.0/24", Scope::Global, Some(500)));
        assert_eq!(m.next_expiry().unwrap().timestamp(), 300);
        let gone = m.take_expired(DateTime::from_timestamp(400, 0).unwrap());
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.cidr.to_string(), "10.0.0.0/24");
        assert_eq!(m.list(ListKind::Block).len(), 1);
        assert_eq!(m.list(ListKind::Allow).len(), 1);
        // A permanent replacement leaves no deadline behind.
        m.put(ListKind::Block, entry("10.0.1.0/24", Scope::Global, None));
        assert_eq!(m.next_expiry(), None);
    }

    #[test]
    fn scopes_of_a_cidr() {
        let mut m = Mirror::default();
        m.put(ListKind::Block, entry("10.0.0.0/24", Scope::Global, None));
        m.put(ListKind::Block, entry("10.0.0.0/24", Scope::Sensor("a".into()), None));
        m.put(ListKind::Block, entry("10.0.1.0/24", Scope::Sensor("a".into()), None));
        assert_eq!(m.scopes_of(ListKind::Block, &"10.0.0.0/24".parse().unwrap()).len(), 2);
        m.remove(ListKind::Block, &"10.0.0.0/24".parse().unwrap(), &Scope::Global);
        assert_eq!(
            m.scopes_of(ListKind::Block, &"10.0.0.0/24".parse().unwrap()),
            vec![Scope::Sensor("a".into())]
        );
    }
}

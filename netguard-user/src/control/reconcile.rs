//! Loading the lists into the mirror and the kernel: at start, after a store outage, and on every
//! fleet resubscription. The kernel is changed by difference, never cleared and refilled, and every
//! entry it holds is tracked (so it expires).

use super::*;

impl Control {
    /// Re-reads both lists from the store and makes the mirror and kernel match them, as far as
    /// the kernel tables allow (see [`Control::load`]). Entries the store could not read are
    /// skipped, counted and reported in one alert per reconcile.
    pub async fn reconcile(&self) -> Result<LoadReport, ControlError> {
        let block = self
            .inner
            .store
            .list_entries(ListKind::Block)
            .await
            .map_err(ControlError::Store)?;
        let allow = self
            .inner
            .store
            .list_entries(ListKind::Allow)
            .await
            .map_err(ControlError::Store)?;
        let malformed = self.inner.store.take_malformed();
        if !malformed.is_empty() {
            self.inner.malformed_total.inc_by(malformed.len() as u64);
            log::error!(
                "{} stored entr{} could not be read and were skipped (first: {}); every other entry is enforced. Fix or delete them in the store",
                malformed.len(),
                if malformed.len() == 1 { "y" } else { "ies" },
                malformed[0]
            );
            let mut evidence = serde_json::Map::new();
            evidence.insert("malformed_entries".into(), malformed.len().into());
            evidence.insert(
                "keys".into(),
                malformed
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .into(),
            );
            evidence.insert("note".into(), "one alert per load; netguard_store_malformed_entries_total counts every skipped entry".into());
            self.raise_alert(self.system_alert("store_malformed_entry", "T1565.001", evidence))
                .await;
        }
        Ok(self
            .load([(ListKind::Block, block), (ListKind::Allow, allow)])
            .await)
    }

    /// Makes the mirror and the kernel hold `lists` (complete lists, all scopes), changing only
    /// the difference: what the kernel holds and the lists do not is removed, what is missing is
    /// inserted as far as the table has room. Whatever happens half-way, the mirror tracks exactly
    /// what the kernel holds (so every kernel entry still expires and can be removed); entries that
    /// did not fit stay out of both, and are reported.
    pub async fn load(&self, lists: [(ListKind, Vec<ListEntry>); 2]) -> LoadReport {
        let now = Utc::now();
        let mut report = LoadReport::default();
        let mut mirror = self.inner.mirror.lock().await;
        let mut next = Mirror::default();
        for (i, (kind, entries)) in lists.into_iter().enumerate() {
            let entries: Vec<ListEntry> =
                entries.into_iter().filter(|e| !e.is_expired(now)).collect();
            let want: HashSet<IpNet> = entries
                .iter()
                .filter(|e| self.applies(&e.scope))
                .map(|e| e.cidr)
                .collect();
            let mut dp = self.dp();
            let t = table_mut(&mut dp, kind);
            for n in t.nets().into_iter().filter(|n| !want.contains(n)) {
                if let Err(e) = t.remove(n) {
                    log::error!("removing stale {n} from the kernel failed: {e}");
                }
            }
            // In list order, so what does not fit is the same tail every time.
            let mut seen = HashSet::new();
            let missing: Vec<IpNet> = entries
                .iter()
                .filter(|e| self.applies(&e.scope) && !t.contains(&e.cidr) && seen.insert(e.cidr))
                .map(|e| e.cidr)
                .collect();
            if let Err(first) = t.insert_many(&missing) {
                // Too many for the table (or a kernel error): one at a time, keeping what fits.
                for n in &missing {
                    if let Err(e) = t.insert_many(std::slice::from_ref(n)) {
                        if report.not_fitting.is_empty() {
                            log::error!(
                                "the kernel {} table refused entries ({first}); first refused: {n}: {e}",
                                kind.as_str()
                            );
                        }
                        report.not_fitting.push((kind, *n));
                    }
                }
            }
            // The kernel now: entries of other scopes are kept (listed, not enforced); ours only
            // if the kernel holds them.
            let held: HashSet<IpNet> = t.nets().into_iter().collect();
            drop(dp);
            for e in entries {
                if !self.applies(&e.scope) || held.contains(&e.cidr) {
                    next.put(kind, e);
                }
            }
            // A stale entry whose removal failed stays tracked under its old entry.
            for n in &held {
                if next.scopes_of(kind, n).is_empty() {
                    for s in mirror.scopes_of(kind, n) {
                        if let Some(old) = mirror.remove(kind, n, &s) {
                            next.put(kind, old);
                        }
                    }
                }
            }
            report.enforced[i] = held.len();
        }
        *mirror = next;
        drop(mirror);
        if !report.not_fitting.is_empty() {
            log::error!(
                "{} entr{} did not fit in the kernel tables and are NOT enforced on this sensor (raise the [datapath] map sizes); everything in the kernel is tracked and expires",
                report.not_fitting.len(),
                if report.not_fitting.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
        }
        self.inner.expiry_wake.notify_one();
        self.inner.snapshot_wake.notify_one();
        report
    }

    /// An alert about the sensor itself (not about a source address).
    pub(super) fn system_alert(
        &self,
        class: &str,
        mitre: &str,
        evidence: serde_json::Map<String, serde_json::Value>,
    ) -> Alert {
        let now = Utc::now();
        Alert {
            id: format!(
                "{}-{}-{class}",
                self.inner.cfg.sensor_id,
                now.timestamp_millis()
            ),
            ts: now,
            sensor_id: self.inner.cfg.sensor_id.clone(),
            class: class.into(),
            src_ip: IpAddr::from([0u8; 4]),
            dst_ip: None,
            dst_port: None,
            risk: 50,
            confidence: 1.0,
            mitre: mitre.into(),
            action: "refused".into(),
            evidence,
            count: 1,
        }
    }
}

/// What [`Control::load`] did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Entries the kernel holds now: blocklist, allowlist.
    pub enforced: [usize; 2],
    /// Entries this sensor should enforce that did not fit in the kernel tables.
    pub not_fitting: Vec<(ListKind, IpNet)>,
}

pub(super) fn table(dp: &Datapath, kind: ListKind) -> &dyn CidrOps {
    match kind {
        ListKind::Block => &dp.blocklist,
        ListKind::Allow => &dp.allowlist,
    }
}

pub(super) fn table_mut(dp: &mut Datapath, kind: ListKind) -> &mut dyn CidrOps {
    match kind {
        ListKind::Block => &mut dp.blocklist,
        ListKind::Allow => &mut dp.allowlist,
    }
}

/// The value-independent part of a CIDR table, so the blocklist and allowlist share one code path.
pub(super) trait CidrOps {
    fn contains(&self, net: &IpNet) -> bool;
    fn check_capacity(&self, nets: &[IpNet]) -> Result<(), DatapathError>;
    fn insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError>;
    fn remove(&mut self, net: IpNet) -> Result<bool, DatapathError>;
    fn nets(&self) -> Vec<IpNet>;
}

impl<V: aya::Pod + Default> CidrOps for crate::datapath::CidrTable<V> {
    fn contains(&self, net: &IpNet) -> bool {
        crate::datapath::CidrTable::contains(self, net)
    }
    fn insert_many(&mut self, nets: &[IpNet]) -> Result<usize, DatapathError> {
        crate::datapath::CidrTable::insert_many(self, nets)
    }
    fn check_capacity(&self, nets: &[IpNet]) -> Result<(), DatapathError> {
        crate::datapath::CidrTable::check_capacity(self, nets)
    }
    fn remove(&mut self, net: IpNet) -> Result<bool, DatapathError> {
        crate::datapath::CidrTable::remove(self, net)
    }
    fn nets(&self) -> Vec<IpNet> {
        crate::datapath::CidrTable::nets(self).copied().collect()
    }
}

//! The write path: adding and removing list entries, with every check a request must pass
//! (fields, the never-block set, the allowlist, covering every address, the caps on automatic
//! blocks) before the kernel and then the store are changed.

use super::*;

impl Control {
    /// Adds or replaces entries. All items are validated first; any invalid item fails the whole
    /// request with every item's problem listed, and nothing is applied.
    pub async fn put(
        &self,
        kind: ListKind,
        reqs: &[EntryRequest],
        source: EntrySource,
    ) -> Result<PutOutcome, ControlError> {
        if reqs.len() > self.inner.cfg.max_bulk {
            return Err(ControlError::TooLarge {
                count: reqs.len(),
                limit: self.inner.cfg.max_bulk,
            });
        }
        let now = Utc::now();
        let bulk = reqs.len() > 1;
        let mut errors = Vec::new();
        let mut entries = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            // Field names like `items[3].cidr` are built only for items that fail.
            match request::to_entry(r, source, now, "") {
                Ok(e) => entries.push((i, e)),
                Err(mut e) if bulk => {
                    e.field = format!("items[{i}].{}", e.field);
                    errors.push(e);
                }
                Err(e) => errors.push(e),
            }
        }
        let automatic = matches!(source, EntrySource::Auto | EntrySource::Event);
        if kind == ListKind::Block {
            for (i, e) in &entries {
                let Some(p) = self.inner.trust.never_block.conflict(&e.cidr) else {
                    continue;
                };
                if automatic && !bulk {
                    return Err(ControlError::NeverBlock {
                        cidr: e.cidr,
                        protected: p,
                    });
                }
                if !reqs[*i].force {
                    let prefix = if bulk {
                        format!("items[{i}].")
                    } else {
                        String::new()
                    };
                    errors.push(FieldError::new(
                        format!("{prefix}cidr"),
                        format!("{} would block {}; NetGuard never blocks what this host depends on (GET /api/v1/never-block lists them): send \"force\": true to block it anyway", e.cidr, p.reason()),
                    ));
                }
            }
        }
        let mut mirror = self.inner.mirror.lock().await;
        if kind == ListKind::Block {
            errors.extend(self.allowlist_conflicts(&mirror, &entries, bulk));
            errors.extend(coverage::refusals(
                &mirror,
                &entries,
                |i| reqs[i].force,
                |s| self.applies(s),
                bulk,
            ));
        }
        if !errors.is_empty() {
            return Err(ControlError::Invalid(errors));
        }
        if kind == ListKind::Block && automatic {
            self.check_caps(&entries).await?;
        }
        // Later duplicates of the same (cidr, scope) win, as if applied one after another.
        let mut seen = HashSet::new();
        let mut entries: Vec<ListEntry> = entries
            .into_iter()
            .rev()
            .map(|(_, e)| e)
            .filter(|e| seen.insert((e.cidr, e.scope.clone())))
            .collect();
        entries.reverse();
        self.apply(&mut mirror, kind, entries, source).await
    }

    /// Allowlisted addresses can never be blocked: refuse a block that overlaps an allowlist entry
    /// in either direction (covering it, or inside it).
    pub(super) fn allowlist_conflicts(
        &self,
        mirror: &Mirror,
        entries: &[(usize, ListEntry)],
        bulk: bool,
    ) -> Vec<FieldError> {
        let allow = mirror.list(ListKind::Allow);
        if allow.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, e) in entries {
            let prefix = if bulk {
                format!("items[{i}].")
            } else {
                String::new()
            };
            if let Some(((a, scope), _)) = allow.iter().find(|((a, s), _)| {
                request::overlaps(a, &e.cidr)
                    && (*s == Scope::Global || e.scope == Scope::Global || *s == e.scope)
            }) {
                out.push(FieldError::new(
                    format!("{prefix}cidr"),
                    format!("{} overlaps allowlisted {a} (scope {scope}); allowlisted addresses are never blocked: remove the allowlist entry first", e.cidr),
                ));
            }
        }
        out
    }

    pub(super) async fn apply(
        &self,
        mirror: &mut Mirror,
        kind: ListKind,
        entries: Vec<ListEntry>,
        source: EntrySource,
    ) -> Result<PutOutcome, ControlError> {
        // The new CIDRs this sensor must now enforce; refuse up front if they do not fit.
        let fresh: Vec<IpNet> = {
            let dp = self.dp();
            let table = table(&dp, kind);
            let fresh: Vec<IpNet> = entries
                .iter()
                .filter(|e| self.applies(&e.scope) && !table.contains(&e.cidr))
                .map(|e| e.cidr)
                .collect();
            table
                .check_capacity(&fresh)
                .map_err(ControlError::Datapath)?;
            fresh
        };
        // Kernel and store are written concurrently (a 100k bulk spends ~120 ms in the one and ~250 ms
        // in the other). A kernel failure undoes the store write; a store failure leaves the kernel
        // entry in place (the kernel enforces, the store catches up: see the module docs).
        let dp = self.inner.dp.clone();
        let to_insert = fresh.clone();
        let kernel = tokio::task::spawn_blocking(move || {
            let mut dp = dp.lock().expect("datapath lock poisoned");
            table_mut(&mut dp, kind).insert_many(&to_insert)
        });
        let (kernel, stored) = tokio::join!(kernel, self.inner.store.put_entries(kind, &entries));
        let kernel = kernel.expect("kernel insert task panicked");
        if let Err(e) = kernel {
            {
                let mut dp = self.dp();
                for cidr in &fresh {
                    let _ = table_mut(&mut dp, kind).remove(*cidr);
                }
            }
            if stored.is_ok() {
                for e in &entries {
                    if let Err(err) = self.inner.store.remove_entry(kind, &e.cidr, &e.scope).await {
                        log::error!(
                            "undoing {} in the store after a kernel failure: {err}",
                            e.cidr
                        );
                    }
                }
            }
            return Err(ControlError::Datapath(e));
        }
        match stored {
            Ok(()) => {}
            // Nothing was written anywhere yet that needs undoing: the entries are refused whole.
            Err(e @ StoreError::Invalid { .. }) => {
                let mut dp = self.dp();
                for cidr in &fresh {
                    let _ = table_mut(&mut dp, kind).remove(*cidr);
                }
                return Err(ControlError::Store(e));
            }
            // The resilient store queues what it can retry; what reaches here (its queue is full,
            // or a store without a queue failed) is enforced but not stored.
            Err(e) => log::error!(
                "{} {} entr{} enforced in the kernel but NOT saved in the store ({e}); they hold on this sensor until it restarts",
                entries.len(),
                kind.as_str(),
                if entries.len() == 1 { "y" } else { "ies" }
            ),
        }
        let mut created = 0;
        for e in &entries {
            if mirror.put(kind, e.clone()).is_none() {
                created += 1;
            }
        }
        self.inner.expiry_wake.notify_one();
        self.publish(PushEvent::change(kind, &entries, source));
        Ok(PutOutcome {
            applied: entries.len(),
            created,
            entries,
        })
    }

    /// Removes `cidr` (under `scope`, or under every scope when None). Idempotent: returns how many
    /// entries existed.
    pub async fn remove(
        &self,
        kind: ListKind,
        cidr: &str,
        scope: Option<&str>,
    ) -> Result<usize, ControlError> {
        let cidr = request::parse_cidr(cidr)
            .map_err(|e| ControlError::Invalid(vec![FieldError::new("cidr", e)]))?;
        let scope = scope
            .map(|s| request::parse_scope(Some(s)))
            .transpose()
            .map_err(|e| ControlError::Invalid(vec![FieldError::new("scope", e)]))?;
        let mut mirror = self.inner.mirror.lock().await;
        let scopes = match scope {
            Some(s) => vec![s],
            None => mirror.scopes_of(kind, &cidr),
        };
        let mut removed = 0;
        for s in scopes {
            let in_store = self
                .inner
                .store
                .remove_entry(kind, &cidr, &s)
                .await
                .map_err(ControlError::Store)?;
            if self.forget(&mut mirror, kind, cidr, &s, "removed")? || in_store {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Drops an entry from the mirror and, when no other applicable entry keeps the CIDR, from the
    /// kernel; announces it. Returns whether the mirror had it.
    pub(super) fn forget(
        &self,
        mirror: &mut Mirror,
        kind: ListKind,
        cidr: IpNet,
        scope: &Scope,
        reason: &'static str,
    ) -> Result<bool, ControlError> {
        let had = mirror.remove(kind, &cidr, scope).is_some();
        let still_enforced = mirror
            .scopes_of(kind, &cidr)
            .iter()
            .any(|s| self.applies(s));
        if !still_enforced {
            table_mut(&mut self.dp(), kind)
                .remove(cidr)
                .map_err(ControlError::Datapath)?;
        }
        if had {
            self.publish(PushEvent::removal(kind, cidr, scope.clone(), reason));
        }
        Ok(had)
    }
}

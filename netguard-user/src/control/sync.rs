//! Fleet sync: with a shared Redis, changes made by other sensors arrive on the store's change feed
//! and are applied to this sensor's mirror and kernel (not written back to the store).
//!
//! A remote block is checked as a local one would be before this sensor enforces it: it must not
//! overlap this sensor's allowlist, must not cover every address (a local request needs `force`
//! for that, which the feed cannot carry), and an automatic one (sources `auto`, `event`) must not
//! touch this host's never-block set (its own addresses, next hops, resolvers, Redis, peers): the
//! other sensor checked its own set, not ours. A refused change is logged, counted
//! (`netguard_fleet_changes_refused_total`) and alerted; it stays in the store for the sensors that
//! accept it.

use netguard_store::{ChangeEvent, EntryChange, EntrySource, ListEntry, ListKind};

use super::{Control, PushEvent};

/// Subscribes to the fleet's change feed: the task that applies it, or None for a store without
/// one (the embedded store: this sensor is its only writer).
pub async fn subscribe(
    control: Control,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let rx = match control.inner.store.subscribe_changes().await {
        Ok(Some(rx)) => rx,
        Ok(None) => return None,
        Err(e) => {
            log::warn!(
                "fleet change feed unavailable ({e}); changes by other sensors apply after a restart"
            );
            return None;
        }
    };
    Some(run(control, rx))
}

async fn run(control: Control, mut rx: netguard_store::ChangeReceiver) {
    while let Some(ev) = rx.recv().await {
        let res = match ev {
            ChangeEvent::Change(EntryChange::Put {
                kind,
                entry,
                origin,
            }) => {
                log::debug!("fleet: {origin} put {} ({})", entry.cidr, entry.scope);
                apply_put(&control, kind, entry, &origin).await
            }
            ChangeEvent::Change(EntryChange::Remove {
                kind,
                cidr,
                scope,
                expired,
                origin,
            }) => {
                log::debug!("fleet: {origin} removed {cidr} ({scope})");
                let mut mirror = control.inner.mirror.lock().await;
                control
                    .forget(
                        &mut mirror,
                        kind,
                        cidr,
                        &scope,
                        if expired { "expired" } else { "fleet" },
                    )
                    .map(|_| ())
            }
            // Changes may have been missed while the subscription was down: re-read everything.
            ChangeEvent::Resubscribed => control.reconcile().await.map(|_| ()),
        };
        if let Err(e) = res {
            log::error!("applying a fleet change failed: {e}");
        }
    }
}

/// Why this sensor refuses to enforce a remote entry, if it does.
fn refusal(
    control: &Control,
    mirror: &super::Mirror,
    kind: ListKind,
    entry: &ListEntry,
) -> Option<String> {
    if kind != ListKind::Block || !control.applies(&entry.scope) {
        return None;
    }
    if entry.cidr.prefix_len() == 0 {
        return Some(format!("{} covers every address", entry.cidr));
    }
    let one = [(0, entry.clone())];
    if let Some(err) = control
        .allowlist_conflicts(mirror, &one, false)
        .into_iter()
        .chain(super::coverage::refusals(
            mirror,
            &one,
            |_| false,
            |s| control.applies(s),
            false,
        ))
        .next()
    {
        return Some(err.error);
    }
    if matches!(entry.source, EntrySource::Auto | EntrySource::Event)
        && let Some(p) = control.inner.trust.never_block.conflict(&entry.cidr)
    {
        return Some(format!(
            "{} is never blocked automatically here: {}",
            entry.cidr,
            p.reason()
        ));
    }
    None
}

async fn apply_put(
    control: &Control,
    kind: ListKind,
    entry: ListEntry,
    origin: &str,
) -> Result<(), super::ControlError> {
    let mut mirror = control.inner.mirror.lock().await;
    if let Some(why) = refusal(control, &mirror, kind, &entry) {
        drop(mirror);
        control.inner.fleet_refused_total.inc();
        log::warn!(
            "fleet: refused {} {} from sensor {origin}: {why}",
            kind.as_str(),
            entry.cidr
        );
        let mut evidence = serde_json::Map::new();
        evidence.insert("cidr".into(), entry.cidr.to_string().into());
        evidence.insert("origin".into(), origin.into());
        evidence.insert(
            "source".into(),
            serde_json::to_value(entry.source).unwrap_or_default(),
        );
        evidence.insert("detail".into(), why.into());
        control
            .raise_alert(control.system_alert("fleet_change_refused", "T1562.004", evidence))
            .await;
        return Ok(());
    }
    if control.applies(&entry.scope) {
        let mut dp = control.dp();
        super::table_mut(&mut dp, kind)
            .insert_many(&[entry.cidr])
            .map_err(super::ControlError::Datapath)?;
    }
    let source = entry.source;
    mirror.put(kind, entry.clone());
    control.inner.expiry_wake.notify_one();
    control.publish(PushEvent::change(kind, &[entry], source));
    Ok(())
}

//! Fleet sync: with a shared Redis, changes made by other sensors arrive on the store's change feed
//! and are applied to this sensor's mirror and kernel (not written back to the store).

use netguard_store::{ChangeEvent, EntryChange};

use super::{Control, PushEvent};

pub async fn spawn(control: Control) {
    let rx = match control.inner.store.subscribe_changes().await {
        Ok(Some(rx)) => rx,
        Ok(None) => return, // embedded store: this sensor is the only writer
        Err(e) => {
            log::warn!("fleet change feed unavailable ({e}); changes by other sensors apply after a restart");
            return;
        }
    };
    tokio::spawn(run(control, rx));
}

async fn run(control: Control, mut rx: netguard_store::ChangeReceiver) {
    while let Some(ev) = rx.recv().await {
        let res = match ev {
            ChangeEvent::Change(EntryChange::Put { kind, entry, origin }) => {
                log::debug!("fleet: {origin} put {} ({})", entry.cidr, entry.scope);
                apply_put(&control, kind, entry).await
            }
            ChangeEvent::Change(EntryChange::Remove { kind, cidr, scope, expired, origin }) => {
                log::debug!("fleet: {origin} removed {cidr} ({scope})");
                let mut mirror = control.inner.mirror.lock().await;
                control
                    .forget(&mut mirror, kind, cidr, &scope, if expired { "expired" } else { "fleet" })
                    .map(|_| ())
            }
            // Changes may have been missed while the subscription was down: re-read everything.
            ChangeEvent::Resubscribed => control.reconcile().await,
        };
        if let Err(e) = res {
            log::error!("applying a fleet change failed: {e}");
        }
    }
}

async fn apply_put(control: &Control, kind: netguard_store::ListKind, entry: netguard_store::ListEntry) -> Result<(), super::ControlError> {
    let mut mirror = control.inner.mirror.lock().await;
    if control.applies(&entry.scope) {
        let mut dp = control.dp();
        super::table_mut(&mut dp, kind).insert_many(&[entry.cidr]).map_err(super::ControlError::Datapath)?;
    }
    let source = entry.source;
    mirror.put(kind, entry.clone());
    control.inner.expiry_wake.notify_one();
    control.publish(PushEvent::change(kind, &[entry], source));
    Ok(())
}

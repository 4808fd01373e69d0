//! Expiry: sleep until the earliest deadline in the mirror, then remove what expired from the kernel
//! and the store. No entry is polled; a new, earlier deadline wakes the timer.

use chrono::Utc;
use netguard_store::ListKind;

use super::Control;

/// Upper bound on one sleep, so a clock step (NTP) cannot postpone expiry indefinitely.
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn run(control: Control) {
    loop {
        let next = control.inner.mirror.lock().await.next_expiry();
        let sleep = match next {
            Some(at) => (at - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = control.inner.expiry_wake.notified() => continue,
        }
        expire_due(&control).await;
    }
}

async fn expire_due(control: &Control) {
    let now = Utc::now();
    let mut mirror = control.inner.mirror.lock().await;
    let due = mirror.take_expired(now);
    if due.is_empty() {
        return;
    }
    // Kernel first and unconditionally: enforcement must end on time even when the store is away.
    for (kind, e) in &due {
        // Re-insert then forget, so `forget` sees and announces it (take_expired already removed it).
        mirror.put(*kind, e.clone());
        if let Err(err) = control.forget(&mut mirror, *kind, e.cidr, &e.scope, "expired") {
            log::error!("expiring {} from the kernel failed: {err}", e.cidr);
        }
    }
    drop(mirror);
    log::info!(
        "expired {} entr{}",
        due.len(),
        if due.len() == 1 { "y" } else { "ies" }
    );
    // The store keeps its own copy; with several sensors on one Redis only one of them gets each entry.
    for kind in [ListKind::Block, ListKind::Allow] {
        if let Err(err) = control.inner.store.take_expired(kind, now).await {
            log::warn!("store expiry sweep failed (will retry at the next deadline): {err}");
        }
    }
}

//! The list-entry part of the contract: CRUD, bulk atomicity, expiry.

use std::sync::Arc;

use chrono::Duration;
use netguard_store::{DEFAULT_ALERT_CAP, EntrySource, ListKind, Scope, StoreError};

use crate::support::{Harness, entry, now_ms};

fn sensor_scope(id: &str) -> Scope {
    Scope::Sensor(id.into())
}

/// Put, replace, list, remove; block and allow lists and scopes are independent.
pub async fn entry_crud(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    let a = entry("10.0.0.0/8", Scope::Global);
    let b = entry("2001:db8::/32", sensor_scope("vm-1"));
    let a_on_vm1 = entry("10.0.0.0/8", sensor_scope("vm-1"));
    store
        .put_entries(ListKind::Block, &[a.clone(), b.clone()])
        .await
        .unwrap();
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&a_on_vm1))
        .await
        .unwrap();
    // Sorted by (cidr, scope): Global sorts before Sensor.
    let listed = store.list_entries(ListKind::Block).await.unwrap();
    assert_eq!(listed, vec![a.clone(), a_on_vm1.clone(), b.clone()]);
    assert!(
        store
            .list_entries(ListKind::Allow)
            .await
            .unwrap()
            .is_empty()
    );

    // Same identity replaces, and fields not set any more disappear.
    let mut a2 = a.clone();
    a2.reason = None;
    a2.source = EntrySource::Auto;
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&a2))
        .await
        .unwrap();
    let listed = store.list_entries(ListKind::Block).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0], a2);

    // The allowlist is a separate list even for the same CIDR.
    store
        .put_entries(ListKind::Allow, std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(
        store.list_entries(ListKind::Allow).await.unwrap(),
        vec![a.clone()]
    );

    // Removal is idempotent and scope-exact.
    assert!(
        store
            .remove_entry(ListKind::Block, &a.cidr, &Scope::Global)
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_entry(ListKind::Block, &a.cidr, &Scope::Global)
            .await
            .unwrap()
    );
    let listed = store.list_entries(ListKind::Block).await.unwrap();
    assert_eq!(listed, vec![a_on_vm1, b]);
    assert_eq!(store.list_entries(ListKind::Allow).await.unwrap(), vec![a]);
    store.put_entries(ListKind::Block, &[]).await.unwrap();
}

/// A bulk put with one invalid entry applies nothing; a valid bulk put appears all at once.
pub async fn bulk_atomicity(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    let mut batch: Vec<_> = (0..50)
        .map(|i| entry(&format!("192.0.2.{i}/32"), Scope::Global))
        .collect();
    batch.push(entry("198.51.100.7/24", Scope::Global)); // host bits set: invalid
    let err = store
        .put_entries(ListKind::Block, &batch)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid { field: "cidr", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("198.51.100.0/24"),
        "says what to use: {err}"
    );
    assert!(
        store
            .list_entries(ListKind::Block)
            .await
            .unwrap()
            .is_empty()
    );

    let reserved = vec![
        entry("192.0.2.1/32", Scope::Global),
        entry("192.0.2.2/32", sensor_scope("global")),
    ];
    assert!(store.put_entries(ListKind::Block, &reserved).await.is_err());
    assert!(
        store
            .list_entries(ListKind::Block)
            .await
            .unwrap()
            .is_empty()
    );

    // A reader polling while a large batch is written sees either none or all of it.
    let n = 400;
    let big: Vec<_> = (0..n)
        .map(|i| entry(&format!("10.{}.{}.0/24", i / 256, i % 256), Scope::Global))
        .collect();
    let reader_store = Arc::clone(&store);
    let reader = tokio::spawn(async move {
        let mut sizes = Vec::new();
        for _ in 0..200 {
            let len = reader_store
                .list_entries(ListKind::Block)
                .await
                .unwrap()
                .len();
            sizes.push(len);
            if len == n {
                break;
            }
            tokio::task::yield_now().await;
        }
        sizes
    });
    store.put_entries(ListKind::Block, &big).await.unwrap();
    let sizes = reader.await.unwrap();
    assert!(
        sizes.iter().all(|&len| len == 0 || len == n),
        "partial batch seen: {sizes:?}"
    );
    assert_eq!(store.list_entries(ListKind::Block).await.unwrap().len(), n);
}

/// Expired entries are hidden, indexed by expiry, and handed out once by `take_expired`.
pub async fn ttl_expiry(h: &dyn Harness) {
    let store = h.open(DEFAULT_ALERT_CAP).await;
    let now = now_ms();
    let permanent = entry("203.0.113.1/32", Scope::Global);
    let mut past = entry("203.0.113.2/32", Scope::Global);
    past.expires_at = Some(now - Duration::seconds(1));
    let mut hour = entry("203.0.113.3/32", sensor_scope("vm-2"));
    hour.expires_at = Some(now + Duration::hours(1));
    let mut two_hours = entry("2001:db8::1/128", Scope::Global);
    two_hours.expires_at = Some(now + Duration::hours(2));
    let all = [
        permanent.clone(),
        past.clone(),
        hour.clone(),
        two_hours.clone(),
    ];
    store.put_entries(ListKind::Block, &all).await.unwrap();

    let listed = store.list_entries(ListKind::Block).await.unwrap();
    assert_eq!(
        listed,
        vec![permanent.clone(), hour.clone(), two_hours.clone()]
    );
    assert_eq!(
        store.next_expiry(ListKind::Block).await.unwrap(),
        past.expires_at
    );
    assert_eq!(store.next_expiry(ListKind::Allow).await.unwrap(), None);

    assert_eq!(
        store.take_expired(ListKind::Block, now).await.unwrap(),
        vec![past]
    );
    assert!(
        store
            .take_expired(ListKind::Block, now)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.next_expiry(ListKind::Block).await.unwrap(),
        hour.expires_at
    );

    // Expiry exactly at `now` counts as expired.
    let at = hour.expires_at.unwrap();
    assert_eq!(
        store.take_expired(ListKind::Block, at).await.unwrap(),
        vec![hour]
    );
    assert_eq!(
        store.next_expiry(ListKind::Block).await.unwrap(),
        two_hours.expires_at
    );

    // Making an entry permanent drops it from the expiry index.
    let mut now_permanent = two_hours.clone();
    now_permanent.expires_at = None;
    store
        .put_entries(ListKind::Block, std::slice::from_ref(&now_permanent))
        .await
        .unwrap();
    assert_eq!(store.next_expiry(ListKind::Block).await.unwrap(), None);
    let far = now + Duration::days(3650);
    assert!(
        store
            .take_expired(ListKind::Block, far)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.list_entries(ListKind::Block).await.unwrap(),
        vec![permanent, now_permanent],
        "IPv4 sorts before IPv6"
    );

    // Removing a TTL entry removes its index row too.
    let mut ttl = entry("198.51.100.0/24", Scope::Global);
    ttl.expires_at = Some(now + Duration::minutes(5));
    store
        .put_entries(ListKind::Allow, std::slice::from_ref(&ttl))
        .await
        .unwrap();
    assert_eq!(
        store.next_expiry(ListKind::Allow).await.unwrap(),
        ttl.expires_at
    );
    assert!(
        store
            .remove_entry(ListKind::Allow, &ttl.cidr, &ttl.scope)
            .await
            .unwrap()
    );
    assert_eq!(store.next_expiry(ListKind::Allow).await.unwrap(), None);

    // Sub-millisecond expiries: the index never reports one earlier than the real instant.
    let mut fine = entry("198.51.100.0/25", Scope::Global);
    let exact = now_ms() + Duration::minutes(1) + Duration::nanoseconds(300_000);
    fine.expires_at = Some(exact);
    store
        .put_entries(ListKind::Allow, std::slice::from_ref(&fine))
        .await
        .unwrap();
    let next = store.next_expiry(ListKind::Allow).await.unwrap().unwrap();
    assert!(
        next > exact && next - exact < Duration::milliseconds(1),
        "{next} vs {exact}"
    );
    assert!(
        store
            .take_expired(ListKind::Allow, exact)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.take_expired(ListKind::Allow, next).await.unwrap(),
        vec![fine]
    );
}

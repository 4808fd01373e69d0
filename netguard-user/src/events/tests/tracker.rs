//! The sliding-window tracker: per-VM and global rules, overrides, escalation, bounds, validation.

use super::*;

fn rules(per_vm: u32, global: u32) -> Thresholds {
    let m10 = Duration::from_secs(600);
    let h1 = Duration::from_secs(3600);
    Thresholds {
        global: Rule::new(global, m10, h1),
        per_vm: Rule::new(per_vm, m10, h1),
        vms: Default::default(),
    }
}

fn fail<'a>(ts: DateTime<Utc>, src: &str, vm: &'a str) -> Failure<'a> {
    Failure {
        ts,
        ip: ip(src),
        vm,
        user: Some("root"),
        service: "ssh",
        own: false,
    }
}

/// A failure this sensor read in its own sshd log.
fn own_fail<'a>(ts: DateTime<Utc>, src: &str, vm: &'a str) -> Failure<'a> {
    Failure {
        own: true,
        ..fail(ts, src, vm)
    }
}

fn tracker() -> Tracker {
    Tracker::new(1000, Escalation::default())
}

#[test]
fn the_per_vm_rule_trips_exactly_at_the_nth_failure() {
    let th = rules(5, 10);
    let mut tr = tracker();
    for i in 0..4 {
        assert!(
            tr.failure(&th, &fail(t(i * 30), "198.51.100.7", "vm-1"), t(i * 30))
                .is_none(),
            "failure {}",
            i + 1
        );
    }
    let trip = tr
        .failure(&th, &fail(t(120), "198.51.100.7", "vm-1"), t(120))
        .expect("the 5th trips");
    assert_eq!(trip.rule, RuleKind::PerVm("vm-1".into()));
    assert_eq!((trip.failures, trip.max_retry, trip.offence), (5, 5, 1));
    assert_eq!((trip.first, trip.last), (t(0), t(120)));
    assert_eq!(trip.ban_time, Duration::from_secs(3600));
    assert_eq!(trip.services, ["ssh"]);
    // Held while blocked: more failures trip nothing.
    for i in 5..9 {
        assert!(
            tr.failure(&th, &fail(t(120 + i), "198.51.100.7", "vm-1"), t(120 + i))
                .is_none()
        );
    }
}

#[test]
fn failures_outside_the_window_do_not_count() {
    let th = rules(3, 100);
    let mut tr = tracker();
    // One every 301 s: never 3 within 600 s.
    for i in 0..10 {
        let at = t(i * 301);
        assert!(
            tr.failure(&th, &fail(at, "198.51.100.7", "vm-1"), at)
                .is_none()
        );
    }
    // Stale: 3 failures stamped an hour ago, reported now, count for nothing.
    let now = t(10_000);
    for i in 0..3 {
        assert!(
            tr.failure(
                &th,
                &fail(
                    now - chrono::Duration::seconds(3600 - i),
                    "192.0.2.1",
                    "vm-1"
                ),
                now
            )
            .is_none()
        );
    }
    // Out of order but within the window: the 3rd trips.
    assert!(
        tr.failure(&th, &fail(t(10_000), "192.0.2.2", "vm-1"), t(10_000))
            .is_none()
    );
    assert!(
        tr.failure(&th, &fail(t(9_900), "192.0.2.2", "vm-1"), t(10_001))
            .is_none()
    );
    assert!(
        tr.failure(&th, &fail(t(9_950), "192.0.2.2", "vm-1"), t(10_002))
            .is_some()
    );
}

#[test]
fn a_vm_override_wins_over_the_per_vm_default() {
    let mut th = rules(5, 100);
    th.vms.insert(
        "web-1".into(),
        RuleOverride {
            max_retry: Some(2),
            ..Default::default()
        },
    );
    th.vms.insert(
        "db-1".into(),
        RuleOverride {
            enabled: Some(false),
            ..Default::default()
        },
    );
    let mut tr = tracker();
    assert!(
        tr.failure(&th, &fail(t(0), "10.1.1.1", "web-1"), t(0))
            .is_none()
    );
    let trip = tr
        .failure(&th, &fail(t(1), "10.1.1.1", "web-1"), t(1))
        .expect("max_retry 2 on web-1");
    assert_eq!(trip.rule, RuleKind::PerVm("web-1".into()));
    for i in 0..20 {
        assert!(
            tr.failure(&th, &fail(t(i), "10.1.1.2", "db-1"), t(i))
                .is_none(),
            "disabled on db-1"
        );
    }
    for i in 0..4 {
        assert!(
            tr.failure(&th, &fail(t(i), "10.1.1.3", "vm-x"), t(i))
                .is_none()
        );
    }
    assert!(
        tr.failure(&th, &fail(t(5), "10.1.1.3", "vm-x"), t(5))
            .is_some(),
        "the default 5 elsewhere"
    );
}

#[test]
fn global_counts_across_vms_and_scopes_globally() {
    let th = rules(5, 6);
    let mut tr = tracker();
    // 2 failures on each of three VMs: no VM reaches 5, the source reaches 6 across them.
    let vms = ["vm-a", "vm-b", "vm-c"];
    let mut trips = Vec::new();
    for i in 0..6 {
        trips.extend(tr.failure(&th, &fail(t(i), "203.0.113.9", vms[i as usize % 3]), t(i)));
    }
    assert_eq!(trips.len(), 1, "{trips:?}");
    let trip = &trips[0];
    assert_eq!(trip.rule, RuleKind::Global);
    assert_eq!(trip.failures, 6);
    assert_eq!(trip.vms, ["vm-a", "vm-b", "vm-c"]);
    assert!(!trip.also_per_vm);
    // The global block holds the per-VM keys too: no scoped block follows.
    for i in 6..20 {
        assert!(
            tr.failure(&th, &fail(t(i), "203.0.113.9", "vm-a"), t(i))
                .is_none()
        );
    }
    // When both rules trip on one failure, only the global trip is reported (here corroborated by
    // the sensor's own log).
    let th = rules(3, 3);
    let mut tr = tracker();
    tr.failure(&th, &own_fail(t(0), "203.0.113.10", "vm-a"), t(0));
    tr.failure(&th, &own_fail(t(1), "203.0.113.10", "vm-a"), t(1));
    let trip = tr
        .failure(&th, &own_fail(t(2), "203.0.113.10", "vm-a"), t(2))
        .unwrap();
    assert_eq!(trip.rule, RuleKind::Global);
    assert!(trip.also_per_vm);
}

/// The rule that keeps one agent from blocking an address everywhere: a global block needs failures
/// from two VMs, or the sensor's own log; one VM alone gets a block scoped to that VM.
#[test]
fn a_global_block_needs_two_vms_or_the_sensors_own_log() {
    let th = rules(5, 10);
    let src = "203.0.113.20";
    // Ten failures from one VM, each with its own time: the per-VM block at the 5th, nothing global
    // at the 10th (nor later).
    let mut tr = tracker();
    let mut trips = Vec::new();
    for i in 0..15 {
        trips.extend(
            tr.failure(&th, &fail(t(i), src, "win-1"), t(i))
                .map(|t| t.rule),
        );
    }
    assert_eq!(trips, [RuleKind::PerVm("win-1".into())], "per VM only");
    // One failure from a second VM completes the global rule: ten in the window, two VMs.
    let trip = tr
        .failure(&th, &fail(t(15), src, "win-2"), t(15))
        .expect("two VMs reach the global threshold");
    assert_eq!(trip.rule, RuleKind::Global);
    assert_eq!(trip.vms, ["win-1", "win-2"]);
    assert_eq!(trip.failures, 10);

    // Spread over two VMs from the start: global on exactly the 10th failure (win-1's 5th, the 9th
    // in all, blocked it on win-1 first).
    let mut tr = tracker();
    let mut trips = Vec::new();
    for i in 0..10 {
        let vm = if i % 2 == 0 { "win-1" } else { "win-2" };
        trips.extend(
            tr.failure(&th, &fail(t(i), src, vm), t(i))
                .map(|t| (i + 1, t.rule)),
        );
    }
    assert_eq!(
        trips,
        [(9, RuleKind::PerVm("win-1".into())), (10, RuleKind::Global)]
    );

    // The second VM must be within the window: one failure from win-2 eleven minutes before ten from
    // win-1 corroborates nothing.
    let mut tr = tracker();
    assert!(tr.failure(&th, &fail(t(0), src, "win-2"), t(0)).is_none());
    let mut trips = Vec::new();
    for i in 0..10 {
        let at = t(660 + i);
        trips.extend(tr.failure(&th, &fail(at, src, "win-1"), at).map(|t| t.rule));
    }
    assert_eq!(trips, [RuleKind::PerVm("win-1".into())]);
    // ...but one from win-2 earlier in the window does, even after win-1's failures pushed it out
    // of the newest ten.
    let mut tr = tracker();
    tr.failure(&th, &fail(t(0), src, "win-2"), t(0));
    let mut trips = Vec::new();
    for i in 1..=10 {
        trips.extend(
            tr.failure(&th, &fail(t(i), src, "win-1"), t(i))
                .map(|t| t.rule),
        );
    }
    assert_eq!(
        trips,
        [RuleKind::PerVm("win-1".into()), RuleKind::Global],
        "win-2's failure is 10 s old, well within the 10 min window"
    );

    // The sensor's own log is its own evidence: ten failures it read itself block everywhere
    // (per VM first at the 5th, on its own VM).
    let mut tr = tracker();
    let mut trips = Vec::new();
    for i in 0..10 {
        trips.extend(
            tr.failure(&th, &own_fail(t(i), src, "sensor-a"), t(i))
                .map(|t| t.rule),
        );
    }
    assert_eq!(
        trips,
        [RuleKind::PerVm("sensor-a".into()), RuleKind::Global]
    );
    // An agent that names the sensor's own VM is still an agent: no global block from it alone.
    let mut tr = tracker();
    let mut trips = Vec::new();
    for i in 0..12 {
        trips.extend(
            tr.failure(&th, &fail(t(i), src, "sensor-a"), t(i))
                .map(|t| t.rule),
        );
    }
    assert_eq!(trips, [RuleKind::PerVm("sensor-a".into())]);
    // One own-log line among an agent's failures corroborates them.
    let trip = tr
        .failure(&th, &own_fail(t(12), src, "sensor-a"), t(12))
        .expect("own evidence");
    assert_eq!(trip.rule, RuleKind::Global);
}

#[test]
fn repeat_offenders_get_longer_bans_and_success_annotates_or_resets() {
    let th = rules(2, 100);
    let mut tr = tracker();
    let mut bans = Vec::new();
    let mut now = 0;
    for _ in 0..3 {
        tr.failure(&th, &fail(t(now), "10.2.2.2", "vm-1"), t(now));
        let trip = tr
            .failure(&th, &fail(t(now + 1), "10.2.2.2", "vm-1"), t(now + 1))
            .unwrap();
        bans.push((trip.offence, trip.ban_time.as_secs()));
        now += trip.ban_time.as_secs() as i64 + 2; // after the hold (ban) has run out
    }
    assert_eq!(bans, [(1, 3600), (2, 7200), (3, 14_400)]);
    assert_eq!(
        escalated(
            Duration::from_secs(3600),
            2.0,
            20,
            Duration::from_secs(86_400)
        ),
        Duration::from_secs(86_400)
    );

    let mut tr = tracker();
    tr.failure(&th, &fail(t(0), "10.3.3.3", "vm-1"), t(0));
    tr.success(
        ip("10.3.3.3"),
        "vm-1",
        Some("alice"),
        t(1),
        OnSuccess::Annotate,
    );
    let trip = tr
        .failure(&th, &fail(t(2), "10.3.3.3", "vm-1"), t(2))
        .expect("annotate keeps counting");
    assert_eq!(trip.successes.len(), 1);
    assert_eq!(trip.successes[0].user.as_deref(), Some("alice"));

    let mut tr = tracker();
    tr.failure(&th, &fail(t(0), "10.4.4.4", "vm-1"), t(0));
    tr.success(ip("10.4.4.4"), "vm-1", None, t(1), OnSuccess::Reset);
    assert!(
        tr.failure(&th, &fail(t(2), "10.4.4.4", "vm-1"), t(2))
            .is_none(),
        "reset starts from zero"
    );
    assert!(
        tr.failure(&th, &fail(t(3), "10.4.4.4", "vm-1"), t(3))
            .is_some()
    );
}

#[test]
fn tracked_keys_stay_bounded() {
    let th = rules(5, 10);
    let mut tr = Tracker::new(100, Escalation::default());
    for i in 0..5000u32 {
        let src = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        tr.failure(&th, &fail(t(i64::from(i)), &src, "vm-1"), t(i64::from(i)));
        assert!(tr.tracked() <= 102, "{} keys", tr.tracked());
    }
    // One API batch: every failure at the same `now`. Eviction goes by arrival order, so an attacker
    // interleaved with a flood of one-off sources still trips on its 5th failure.
    let now = t(10_000);
    let mut trips = Vec::new();
    for i in 0..5000u32 {
        let src = std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string();
        tr.failure(&th, &fail(now, &src, "vm-1"), now);
        if i % 10 == 0 {
            let trip = tr.failure(&th, &own_fail(now, "203.0.113.99", "vm-1"), now);
            trips.extend(trip.map(|t| t.rule));
        }
        assert!(tr.tracked() <= 102, "{} keys", tr.tracked());
    }
    assert_eq!(
        trips,
        [RuleKind::PerVm("vm-1".into()), RuleKind::Global],
        "per VM at its 5th failure, global at its 10th, then held"
    );
}

#[test]
fn thresholds_validation_names_fields() {
    let mut th = rules(0, 10);
    th.global.find_time = Duration::ZERO;
    th.vms.insert("global".into(), RuleOverride::default());
    th.vms.insert(
        "web-1".into(),
        RuleOverride {
            ban_time: Some(Duration::from_secs(400 * 86_400)),
            ..Default::default()
        },
    );
    let errs = th.validate("").unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "global.find_time",
            "per_vm.max_retry",
            "vms.global",
            "vms.web-1.max_retry",
            "vms.web-1.ban_time"
        ]
    );
    assert!(rules(5, 10).validate("").is_ok());
}

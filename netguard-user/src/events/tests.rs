//! Unit tests of the pure parts: normalisation, fingerprints, the tracker, the local mapping.

use std::{net::IpAddr, time::Duration};

use chrono::{DateTime, TimeZone as _, Utc};
use serde_json::json;

use super::config::{OnSuccess, Rule, RuleOverride, Thresholds};
use super::normalize::{Poster, event_type, fingerprint, normalize, parse_ts};
use super::tracker::{Escalation, Failure, RuleKind, Tracker, escalated};
use crate::hostevents::{HostEvent, HostEventKind};

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_714_560_000 + secs, 0).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn agent(vm: &str) -> Poster {
    Poster {
        default_vm: Some(vm.into()),
        bound_vm: None,
    }
}

#[test]
fn every_type_and_alias_normalises() {
    for (given, want, service, failure) in [
        ("windows_4625", "windows_4625", "windows", true),
        ("4625", "windows_4625", "windows", true),
        ("Windows-4625", "windows_4625", "windows", true),
        ("WINDOWS_4624", "windows_4624", "windows", false),
        ("4624", "windows_4624", "windows", false),
        ("ssh_failed", "ssh_failed", "ssh", true),
        ("SSH Failed Password", "ssh_failed", "ssh", true),
        ("ssh_invalid_user", "ssh_invalid_user", "ssh", true),
        ("ssh_accepted", "ssh_accepted", "ssh", false),
        ("rdp_failed", "rdp_failed", "rdp", true),
        ("login_failed", "login_failed", "login", true),
        ("auth_success", "login_success", "login", false),
    ] {
        let ty = event_type(given).unwrap_or_else(|| panic!("{given} is accepted"));
        assert_eq!(
            (ty.name, ty.service, ty.failure),
            (want, service, failure),
            "{given}"
        );
    }
    assert!(event_type("4626").is_none());
    assert!(event_type("").is_none());
}

#[test]
fn a_good_item_becomes_a_record() {
    let now = t(100);
    let item = json!({"source_vm_id": "win-7", "ts": "2024-05-01T10:40:00.123456+00:00",
        "src_ip": "::ffff:203.0.113.7", "username": "Administrator", "src_port": "51000",
        "event_type": "4625", "raw": "An account failed to log on."});
    let r = normalize(&item, &Poster::default(), now).unwrap();
    assert_eq!(r.src_ip, ip("203.0.113.7"), "v4-mapped v6 becomes v4");
    assert_eq!(
        r.ts.timestamp_subsec_nanos(),
        123_000_000,
        "truncated to ms"
    );
    assert_eq!(
        (r.event_type.as_str(), r.service.as_str(), r.failure),
        ("windows_4625", "windows", true)
    );
    assert_eq!(r.src_port, Some(51000));
    assert_eq!(r.source_vm_id, "win-7");
    assert_eq!(r.received_at, now);
    assert_eq!(
        r.fingerprint,
        fingerprint(
            r.ts,
            r.src_ip,
            Some("Administrator"),
            Some(51000),
            "win-7",
            "windows_4625"
        )
    );
    // The token's VM fills a missing source_vm_id.
    let item = json!({"ts": 1_714_560_000, "src_ip": "2001:db8::5", "event_type": "ssh_failed"});
    let r = normalize(&item, &agent("vm-9"), now).unwrap();
    assert_eq!(r.source_vm_id, "vm-9");
    assert_eq!((r.username, r.src_port), (None, None));
}

#[test]
fn bad_items_are_rejected_with_the_field_and_a_reason() {
    let now = t(100);
    let base = json!({"source_vm_id": "vm-1", "ts": 1_714_560_000, "src_ip": "10.0.0.1", "event_type": "ssh_failed"});
    let with = |k: &str, v: serde_json::Value| {
        let mut o = base.clone();
        o[k] = v;
        o
    };
    let without = |k: &str| {
        let mut o = base.clone();
        o.as_object_mut().unwrap().remove(k);
        o
    };
    for (item, field, says) in [
        (without("src_ip"), "src_ip", "required"),
        (
            with("src_ip", json!("10.0.0.300")),
            "src_ip",
            "not an IPv4 or IPv6",
        ),
        (with("src_ip", json!("0.0.0.0")), "src_ip", "unspecified"),
        (with("src_ip", json!(17)), "src_ip", "string"),
        (without("ts"), "ts", "required"),
        (with("ts", json!("yesterday")), "ts", "RFC 3339"),
        (with("ts", json!(-5)), "ts", "epoch"),
        (with("ts", json!(12)), "ts", "before the year 2000"),
        (with("ts", json!("2099-01-01T00:00:00Z")), "ts", "future"),
        (without("event_type"), "event_type", "required"),
        (
            with("event_type", json!("4626")),
            "event_type",
            "unknown type `4626`",
        ),
        (with("src_port", json!(70000)), "src_port", "not a port"),
        (with("username", json!(["a"])), "username", "not a string"),
        (
            with("source_vm_id", json!("global")),
            "source_vm_id",
            "reserved",
        ),
        (json!("just text"), "item", "not a JSON object"),
    ] {
        let err = normalize(&item, &Poster::default(), now).unwrap_err();
        assert_eq!(err.field, field, "{item}: {err}");
        assert!(err.reason.contains(says), "{item}: {err}");
    }
    // No VM from the body or the token.
    let err = normalize(&without("source_vm_id"), &Poster::default(), now).unwrap_err();
    assert_eq!(err.field, "source_vm_id");
    // A token bound to vm-2 may not post for vm-1.
    let bound = Poster {
        default_vm: Some("vm-2".into()),
        bound_vm: Some("vm-2".into()),
    };
    let err = normalize(&base, &bound, now).unwrap_err();
    assert!(err.reason.contains("bound to VM `vm-2`"), "{err}");
    assert!(normalize(&without("source_vm_id"), &bound, now).is_ok());
}

#[test]
fn times_in_every_accepted_form_give_one_fingerprint() {
    let a = parse_ts(&json!("2024-05-01T12:00:00.5Z")).unwrap();
    let b = parse_ts(&json!("2024-05-01T14:00:00.500+02:00")).unwrap();
    let c = parse_ts(&json!(1_714_564_800.5)).unwrap();
    let d = parse_ts(&json!(1_714_564_800_500u64)).unwrap();
    let e = parse_ts(&json!("1714564800500")).unwrap();
    assert!([b, c, d, e].iter().all(|x| *x == a), "{a} {b} {c} {d} {e}");
    let f = |ip_: &str, user: Option<&str>, port: Option<u16>, vm: &str, kind: &str| {
        fingerprint(a, ip(ip_), user, port, vm, kind)
    };
    let fp = f("10.0.0.1", Some("root"), Some(22), "vm-1", "ssh_failed");
    assert_eq!(fp.len(), 64);
    assert!(
        fp.bytes()
            .all(|x| x.is_ascii_hexdigit() && !x.is_ascii_uppercase())
    );
    assert_eq!(
        fp,
        f(
            "::ffff:10.0.0.1",
            Some("root"),
            Some(22),
            "vm-1",
            "ssh_failed"
        )
    );
    // Stable across builds: this exact value is what agents and other sensors compute.
    assert_eq!(
        fingerprint(
            t(0),
            ip("203.0.113.7"),
            Some("admin"),
            Some(51000),
            "win-7",
            "windows_4625"
        ),
        "4995bb98009bd04adf4ed766f6efb62b72bab9cacdfb3ec9f4f8ca1e3839d645",
        "sha256 of [\"2024-05-01T10:40:00.000Z\",\"203.0.113.7\",\"admin\",51000,\"win-7\",\"windows_4625\"] (checked with sha256sum)"
    );
    // Every field matters; a username cannot impersonate a port. One VM cannot post another's
    // event first, nor a success pre-empt the failure with the same fields.
    assert_ne!(
        fp,
        f("10.0.0.1", Some("root"), Some(23), "vm-1", "ssh_failed")
    );
    assert_ne!(fp, f("10.0.0.1", None, Some(22), "vm-1", "ssh_failed"));
    assert_ne!(
        fp,
        f("10.0.0.1", Some("root"), Some(22), "vm-2", "ssh_failed")
    );
    assert_ne!(
        fp,
        f("10.0.0.1", Some("root"), Some(22), "vm-1", "ssh_accepted")
    );
    assert_ne!(
        f("10.0.0.1", Some("a\",22"), None, "vm-1", "ssh_failed"),
        f("10.0.0.1", Some("a"), Some(22), "vm-1", "ssh_failed")
    );
}

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

#[test]
fn local_lines_map_to_what_counts() {
    let ev = |kind| HostEvent {
        ts: t(0),
        kind,
        src_ip: ip("::ffff:10.0.0.2"),
        user: Some("root".into()),
        src_port: Some(40_000),
        service: "ssh".into(),
        raw: String::new(),
    };
    let r = super::local_record(&ev(HostEventKind::FailedPassword), "s1", t(1)).unwrap();
    assert_eq!(
        (r.event_type.as_str(), r.failure, r.src_ip),
        ("ssh_failed", true, ip("10.0.0.2"))
    );
    assert_eq!(
        r.fingerprint,
        fingerprint(
            t(0),
            ip("10.0.0.2"),
            Some("root"),
            Some(40_000),
            "s1",
            "ssh_failed"
        ),
        "the agents' fingerprint"
    );
    let r = super::local_record(&ev(HostEventKind::Accepted), "s1", t(1)).unwrap();
    assert_eq!((r.event_type.as_str(), r.failure), ("ssh_accepted", false));
    for k in [
        HostEventKind::PamFailure,
        HostEventKind::InvalidUser,
        HostEventKind::ClosedPreauth,
        HostEventKind::TooManyFailures,
    ] {
        assert!(
            super::local_record(&ev(k), "s1", t(1)).is_none(),
            "{k:?} is not counted"
        );
    }
    assert_ne!(super::normalize::repeat_fingerprint("ab", 1), "ab");
    assert_eq!(super::normalize::repeat_fingerprint("ab", 0), "ab");
}

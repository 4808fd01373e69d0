//! Posted items normalised into records, rejections with their field, and fingerprints.

use super::*;

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

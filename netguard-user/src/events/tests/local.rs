//! Lines of this sensor's own sshd log mapped to what counts.

use super::*;

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
    let r = crate::events::local_record(&ev(HostEventKind::FailedPassword), "s1", t(1)).unwrap();
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
    let r = crate::events::local_record(&ev(HostEventKind::Accepted), "s1", t(1)).unwrap();
    assert_eq!((r.event_type.as_str(), r.failure), ("ssh_accepted", false));
    for k in [
        HostEventKind::PamFailure,
        HostEventKind::InvalidUser,
        HostEventKind::ClosedPreauth,
        HostEventKind::TooManyFailures,
    ] {
        assert!(
            crate::events::local_record(&ev(k), "s1", t(1)).is_none(),
            "{k:?} is not counted"
        );
    }
    assert_ne!(crate::events::normalize::repeat_fingerprint("ab", 1), "ab");
    assert_eq!(crate::events::normalize::repeat_fingerprint("ab", 0), "ab");
}

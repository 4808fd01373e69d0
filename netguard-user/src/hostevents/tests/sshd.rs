//! Every sshd line shape, in all three envelopes (syslog, RFC 3339, bare `-E`), IPv4 and IPv6.

use std::net::IpAddr;

use chrono::{DateTime, FixedOffset, TimeZone as _, Utc};

use crate::hostevents::sshd::{LineParser, parse_message};
use crate::hostevents::{HostEventKind as K, Zone};

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 30).unwrap()
}

fn utc() -> LineParser {
    LineParser::new(Zone::Fixed(FixedOffset::east_opt(0).unwrap()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (message, kind, ip, user, port).
type Case = (
    &'static str,
    K,
    &'static str,
    Option<&'static str>,
    Option<u16>,
);

/// sshd's own wording, as `sshd -E` writes it.
fn cases() -> Vec<Case> {
    vec![
        (
            "Failed password for root from 10.213.1.2 port 40800 ssh2",
            K::FailedPassword,
            "10.213.1.2",
            Some("root"),
            Some(40800),
        ),
        (
            "Failed password for invalid user admin from 10.213.1.2 port 40801 ssh2",
            K::FailedPassword,
            "10.213.1.2",
            Some("admin"),
            Some(40801),
        ),
        (
            "Failed password for invalid user nosuch from ::1 port 50288 ssh2",
            K::FailedPassword,
            "::1",
            Some("nosuch"),
            Some(50288),
        ),
        (
            "Failed password for root from fd00:213:1::2 port 22 ssh2",
            K::FailedPassword,
            "fd00:213:1::2",
            Some("root"),
            Some(22),
        ),
        (
            "Failed keyboard-interactive/pam for invalid user oracle from 192.0.2.7 port 5 ssh2",
            K::FailedPassword,
            "192.0.2.7",
            Some("oracle"),
            Some(5),
        ),
        (
            "Invalid user admin from 10.213.1.2 port 40801",
            K::InvalidUser,
            "10.213.1.2",
            Some("admin"),
            Some(40801),
        ),
        (
            "Invalid user nosuch from ::1 port 50274",
            K::InvalidUser,
            "::1",
            Some("nosuch"),
            Some(50274),
        ),
        // Before OpenSSH 7.x the port was not logged.
        (
            "Invalid user test from 192.0.2.9",
            K::InvalidUser,
            "192.0.2.9",
            Some("test"),
            None,
        ),
        (
            "User root from 10.213.1.2 not allowed because not listed in AllowUsers",
            K::InvalidUser,
            "10.213.1.2",
            Some("root"),
            None,
        ),
        (
            "User bob from fd00:213:1::2 not allowed because account is locked",
            K::InvalidUser,
            "fd00:213:1::2",
            Some("bob"),
            None,
        ),
        (
            "Connection closed by authenticating user root 10.213.1.2 port 40808 [preauth]",
            K::ClosedPreauth,
            "10.213.1.2",
            Some("root"),
            Some(40808),
        ),
        (
            "Connection closed by invalid user pi 2001:db8::5 port 3333 [preauth]",
            K::ClosedPreauth,
            "2001:db8::5",
            Some("pi"),
            Some(3333),
        ),
        (
            "Connection reset by authenticating user root 10.0.0.9 port 12 [preauth]",
            K::ClosedPreauth,
            "10.0.0.9",
            Some("root"),
            Some(12),
        ),
        (
            "Disconnected from authenticating user root 127.0.0.1 port 40790 [preauth]",
            K::ClosedPreauth,
            "127.0.0.1",
            Some("root"),
            Some(40790),
        ),
        (
            "Disconnected from invalid user nosuch ::1 port 50274 [preauth]",
            K::ClosedPreauth,
            "::1",
            Some("nosuch"),
            Some(50274),
        ),
        (
            "Disconnecting authenticating user root 127.0.0.1 port 40800: Too many authentication failures [preauth]",
            K::TooManyFailures,
            "127.0.0.1",
            Some("root"),
            Some(40800),
        ),
        (
            "Disconnecting invalid user nosuch ::1 port 50288: Too many authentication failures [preauth]",
            K::TooManyFailures,
            "::1",
            Some("nosuch"),
            Some(50288),
        ),
        (
            "maximum authentication attempts exceeded for root from 127.0.0.1 port 40800 ssh2 [preauth]",
            K::TooManyFailures,
            "127.0.0.1",
            Some("root"),
            Some(40800),
        ),
        (
            "error: maximum authentication attempts exceeded for invalid user nosuch from ::1 port 50288 ssh2 [preauth]",
            K::TooManyFailures,
            "::1",
            Some("nosuch"),
            Some(50288),
        ),
        (
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.213.1.2  user=root",
            K::PamFailure,
            "10.213.1.2",
            Some("root"),
            None,
        ),
        (
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=2001:db8::7",
            K::PamFailure,
            "2001:db8::7",
            None,
            None,
        ),
        (
            "Accepted password for nglab from 10.213.1.2 port 40900 ssh2",
            K::Accepted,
            "10.213.1.2",
            Some("nglab"),
            Some(40900),
        ),
        (
            "Accepted publickey for nglab from fd00:213:1::2 port 41000 ssh2: ED25519 SHA256:AbCdEf0123",
            K::Accepted,
            "fd00:213:1::2",
            Some("nglab"),
            Some(41000),
        ),
        (
            "Accepted keyboard-interactive/pam for alice from 192.0.2.1 port 2 ssh2",
            K::Accepted,
            "192.0.2.1",
            Some("alice"),
            Some(2),
        ),
    ]
}

#[test]
fn every_message_shape() {
    for (msg, kind, addr, user, port) in cases() {
        let m = parse_message(msg).unwrap_or_else(|| panic!("not recognised: {msg}"));
        assert_eq!(m.kind, kind, "{msg}");
        assert_eq!(m.src_ip, ip(addr), "{msg}");
        assert_eq!(m.user.as_deref(), user, "{msg}");
        assert_eq!(m.src_port, port, "{msg}");
    }
}

#[test]
fn every_shape_in_every_envelope() {
    let p = utc();
    let stamped = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 1).unwrap();
    for (msg, kind, addr, _, _) in cases() {
        let syslog = format!("Nov 21 12:00:01 sensor1 sshd[123]: {msg}");
        let rfc = format!("2026-11-21T12:00:01.000000+00:00 sensor1 sshd[123]: {msg}");
        let journal = format!("2026-11-21T13:00:01+0100 sensor1 sshd-session[9]: {msg}");
        for line in [&syslog, &rfc, &journal] {
            let (e, n) = p.parse(line, now()).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(
                (e.kind, e.src_ip, e.ts, n),
                (kind, ip(addr), stamped, 1),
                "{line}"
            );
            assert_eq!(e.service, "ssh");
            assert_eq!(e.raw, *line);
        }
        // Bare `-E` lines end in "\r\n" and are stamped on arrival.
        let bare = format!("{msg}\r");
        let (e, _) = p.parse(&bare, now()).unwrap();
        assert_eq!((e.kind, e.ts), (kind, now()), "{msg}");
        assert_eq!(e.raw, msg);
    }
}

#[test]
fn real_sshd_e_log_is_parsed() {
    // Verbatim (minus "\r") from `sshd -E` (OpenSSH 9.2, LogLevel VERBOSE) under hydra.
    let log = "Server listening on ::1 port 2222.
Connection from 127.0.0.1 port 40808 on 127.0.0.1 port 2222 rdomain \"\"
Failed password for root from 127.0.0.1 port 40808 ssh2
Connection closed by authenticating user root 127.0.0.1 port 40808 [preauth]
Invalid user nosuch from ::1 port 50288
User root from 127.0.0.1 not allowed because not listed in AllowUsers
Could not get shadow information for NOUSER
Failed password for invalid user nosuch from ::1 port 50288 ssh2
maximum authentication attempts exceeded for invalid user nosuch from ::1 port 50288 ssh2 [preauth]
Disconnecting invalid user nosuch ::1 port 50288: Too many authentication failures [preauth]
Received disconnect from 127.0.0.1 port 40790:11: Bye Bye [preauth]
Received signal 15; terminating.";
    let kinds: Vec<_> = log
        .lines()
        .filter_map(|l| utc().parse(l, now()))
        .map(|(e, _)| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            K::FailedPassword,
            K::ClosedPreauth,
            K::InvalidUser,
            K::InvalidUser,
            K::FailedPassword,
            K::TooManyFailures,
            K::TooManyFailures
        ]
    );
}

#[test]
fn other_lines_are_ignored() {
    let p = utc();
    for line in [
        "",
        "Nov 21 12:00:01 sensor1 CRON[99]: pam_unix(cron:session): session opened for user root",
        // sshd's wording from another program must not count: anyone can write to syslog.
        "Nov 21 12:00:01 sensor1 logger: Failed password for root from 10.0.0.1 port 1 ssh2",
        "2026-11-21T12:00:01+00:00 sensor1 evil[1]: Invalid user x from 10.0.0.1 port 1",
        "Nov 21 12:00:01 sensor1 sshd[1]: Server listening on 0.0.0.0 port 22.",
        "Nov 21 12:00:01 sensor1 sshd[1]: Connection closed by 10.0.0.1 port 5 [preauth]",
        // A logout after a successful login is not a failure.
        "Nov 21 12:00:01 sensor1 sshd[1]: Disconnected from user alice 10.0.0.1 port 5",
        // Probes and key offers are not password guesses.
        "Failed none for invalid user x from 10.0.0.1 port 1 ssh2",
        "Failed publickey for alice from 10.0.0.1 port 1 ssh2: RSA SHA256:xyz",
        // PAM's summary of failures already logged one by one; and a host name that cannot be blocked.
        "PAM 2 more authentication failures; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.0.0.1  user=root",
        "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=attacker.example",
        "Failed password for root from not-an-ip port 1 ssh2",
        "Failed password for root from 10.0.0.1 port 99999 ssh2",
        "Invalid user x from 10.0.0.1 something 1",
        "Disconnecting: Too many authentication failures for root [preauth]",
        "User root from 10.0.0.1 port 5 not allowed because not listed in AllowUsers",
        "User root not allowed because account is locked",
    ] {
        assert_eq!(p.parse(line, now()), None, "{line}");
    }
}

#[test]
fn usernames_cannot_forge_the_address() {
    // The attacker picks the username; the address sshd appends last is the real one.
    let forged = [
        "Failed password for invalid user x from 6.6.6.6 port 1 ssh2 from 10.0.0.1 port 22 ssh2",
        "Invalid user a from 6.6.6.6 port 1 from 10.0.0.1 port 22",
        "Connection closed by invalid user a 6.6.6.6 port 1 10.0.0.1 port 22 [preauth]",
        "Disconnecting invalid user b 6.6.6.6 port 1 10.0.0.1 port 22: Too many authentication failures [preauth]",
    ];
    for msg in forged {
        let m = parse_message(msg).unwrap_or_else(|| panic!("{msg}"));
        assert_eq!(m.src_ip, ip("10.0.0.1"), "{msg}");
        assert_eq!(m.src_port, Some(22), "{msg}");
    }
    let m = parse_message(forged[0]).unwrap();
    assert_eq!(m.user.as_deref(), Some("x from 6.6.6.6 port 1 ssh2"));
    let m = parse_message(
        "User a from 6.6.6.6 not allowed because x from 10.0.0.1 not allowed because not listed in AllowUsers",
    )
    .unwrap();
    assert_eq!(m.src_ip, ip("10.0.0.1"));
}

#[test]
fn odd_usernames_and_addresses() {
    // sshd logs an empty username with two spaces.
    let m = parse_message("Invalid user  from 10.0.0.1 port 7").unwrap();
    assert_eq!(m.user, None);
    let m = parse_message("Failed password for invalid user two words from 10.0.0.1 port 7 ssh2")
        .unwrap();
    assert_eq!(m.user.as_deref(), Some("two words"));
    // A dual-stack socket reports IPv4 clients as mapped IPv6: block the IPv4 address.
    let m = parse_message("Failed password for root from ::ffff:10.0.0.1 port 7 ssh2").unwrap();
    assert_eq!(m.src_ip, ip("10.0.0.1"));
    let m = parse_message("pam_sss(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=10.0.0.3 user=first last").unwrap();
    assert_eq!(m.user.as_deref(), Some("first last"));
}

#[test]
fn folded_repeats_count_every_occurrence() {
    let line = "Nov 21 12:00:01 h sshd[5]: message repeated 3 times: [ Failed password for root from 10.0.0.1 port 7 ssh2]";
    let (e, n) = utc().parse(line, now()).unwrap();
    assert_eq!((e.kind, n), (K::FailedPassword, 3));
}

#[test]
fn syslog_time_is_local_time_of_the_given_zone() {
    let p = LineParser::new(Zone::Fixed(FixedOffset::east_opt(2 * 3600).unwrap()));
    let (e, _) = p
        .parse(
            "Nov 21 14:00:01 h sshd[5]: Invalid user x from 10.0.0.1 port 7",
            now(),
        )
        .unwrap();
    assert_eq!(e.ts, Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 1).unwrap());
    // A single-digit day is space-padded; a host-less line still names its program.
    let (e, _) = utc()
        .parse(
            "Nov  1 14:00:01 sshd[5]: Invalid user x from 10.0.0.1 port 7",
            now(),
        )
        .unwrap();
    assert_eq!(e.ts, Utc.with_ymd_and_hms(2026, 11, 1, 14, 0, 1).unwrap());
}

#[test]
fn a_repeat_bomb_is_clamped_and_said_so() {
    use crate::hostevents::sshd::{AuthLogFormat, MAX_REPEAT, Parsed};
    let p = utc().with_format(AuthLogFormat::Syslog);
    for n in ["4000000000", "99999999999999999999999", "101"] {
        let line = format!(
            "Nov 21 12:00:01 h sshd[5]: message repeated {n} times: [ Failed password for root from 10.0.0.1 port 7 ssh2]"
        );
        match p.classify(&line, now()) {
            Parsed::Event {
                repeat, clamped, ..
            } => assert_eq!((repeat, clamped), (MAX_REPEAT, true), "{line}"),
            other => panic!("{line}: {other:?}"),
        }
    }
    let line = "Nov 21 12:00:01 h sshd[5]: message repeated 100 times: [ Failed password for root from 10.0.0.1 port 7 ssh2]";
    assert!(matches!(
        p.classify(line, now()),
        Parsed::Event {
            repeat: 100,
            clamped: false,
            ..
        }
    ));
    // sshd -E never folds: a bare "message repeated" line is not an sshd login line at all.
    let bare = "message repeated 5 times: [ Failed password for root from 10.0.0.1 port 7 ssh2]";
    let e = utc().with_format(AuthLogFormat::SshdE);
    assert_eq!(e.classify(bare, now()), Parsed::Other);
}

#[test]
fn each_format_takes_only_its_own_shape() {
    use crate::hostevents::sshd::{AuthLogFormat, Parsed};
    let bare = "Failed password for root from 10.0.0.1 port 7 ssh2";
    let syslog = "Nov 21 12:00:01 h sshd[5]: Failed password for root from 10.0.0.1 port 7 ssh2";
    let event = |p: LineParser, l: &str| matches!(p.classify(l, now()), Parsed::Event { .. });
    let syslog_mode = utc().with_format(AuthLogFormat::Syslog);
    // The tail of a long `logger` message, or any line without an envelope, is no sshd line in a
    // syslog file.
    assert_eq!(syslog_mode.classify(bare, now()), Parsed::WrongShape);
    assert!(event(syslog_mode, syslog));
    let e_mode = utc().with_format(AuthLogFormat::SshdE);
    assert!(event(e_mode, bare));
    assert_eq!(e_mode.classify(syslog, now()), Parsed::WrongShape);
    // Auto: the first line decides, for good.
    let mut auto = utc();
    assert_eq!(auto.resolve(syslog, now()), Some(AuthLogFormat::Syslog));
    assert_eq!(auto.resolve(bare, now()), None, "decided once");
    assert_eq!(auto.classify(bare, now()), Parsed::WrongShape);
    let mut auto = utc();
    assert_eq!(auto.resolve(bare, now()), Some(AuthLogFormat::SshdE));
    assert!(event(auto, bare));
}

#[test]
fn a_forged_program_name_cannot_be_told_apart_in_a_syslog_file() {
    // What `logger -t 'sshd[1]' 'Failed password ...'` makes rsyslog write, from any local user: the
    // same bytes as sshd's own line. A plain-text log cannot say who wrote it, so this is counted;
    // README says which sources to trust (a root-only `sshd -E` file, or journald's own fields).
    let forged = "Nov 21 12:00:01 h sshd[1]: Failed password for root from 10.0.0.9 port 7 ssh2";
    let p = utc().with_format(crate::hostevents::sshd::AuthLogFormat::Syslog);
    assert_eq!(
        p.parse(forged, now()).map(|(e, _)| e.kind),
        Some(K::FailedPassword)
    );
    // Other names are still refused, as before.
    let other = "Nov 21 12:00:01 h logger[1]: Failed password for root from 10.0.0.9 port 7 ssh2";
    assert_eq!(p.parse(other, now()), None);
}

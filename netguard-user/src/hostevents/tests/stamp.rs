//! Timestamps: RFC 3339 variants, syslog's year-less format, and the year that has to be guessed.

use chrono::{DateTime, FixedOffset, NaiveTime, TimeZone as _, Utc};

use crate::hostevents::stamp::{Envelope, Zone, infer_year, split};

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn utc() -> Zone {
    Zone::Fixed(FixedOffset::east_opt(0).unwrap())
}

fn t(h: u32, m: u32, s: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, s).unwrap()
}

#[test]
fn year_is_this_years_in_the_normal_case() {
    let now = at(2026, 11, 21, 12, 0, 0);
    assert_eq!(
        infer_year(11, 21, t(11, 59, 0), now, utc()),
        Some(at(2026, 11, 21, 11, 59, 0))
    );
    assert_eq!(
        infer_year(3, 2, t(1, 0, 0), now, utc()),
        Some(at(2026, 3, 2, 1, 0, 0))
    );
}

#[test]
fn december_lines_read_in_january_are_last_years() {
    let now = at(2027, 1, 1, 0, 0, 5);
    assert_eq!(
        infer_year(12, 31, t(23, 59, 59), now, utc()),
        Some(at(2026, 12, 31, 23, 59, 59))
    );
    // A replay in early January of a file that spans the turn of the year.
    let now = at(2027, 1, 3, 9, 0, 0);
    assert_eq!(
        infer_year(12, 30, t(8, 0, 0), now, utc()),
        Some(at(2026, 12, 30, 8, 0, 0))
    );
    assert_eq!(
        infer_year(1, 2, t(8, 0, 0), now, utc()),
        Some(at(2027, 1, 2, 8, 0, 0))
    );
}

#[test]
fn a_writer_clock_slightly_ahead_across_new_year_is_next_year() {
    let now = at(2026, 12, 31, 23, 59, 58);
    assert_eq!(
        infer_year(1, 1, t(0, 0, 1), now, utc()),
        Some(at(2027, 1, 1, 0, 0, 1))
    );
}

#[test]
fn a_line_far_in_the_future_is_from_last_year() {
    // "Dec 1" read on Nov 21: not 10 days ahead, but last year's.
    let now = at(2026, 11, 21, 12, 0, 0);
    assert_eq!(
        infer_year(12, 1, t(0, 0, 0), now, utc()),
        Some(at(2025, 12, 1, 0, 0, 0))
    );
}

#[test]
fn february_29_picks_a_leap_year() {
    let now = at(2029, 3, 1, 0, 0, 0);
    // 2029 and 2030 have no Feb 29 and 2028 does: the latest year the date exists in.
    assert_eq!(
        infer_year(2, 29, t(12, 0, 0), now, utc()),
        Some(at(2028, 2, 29, 12, 0, 0))
    );
    let now = at(2028, 3, 1, 0, 0, 0);
    assert_eq!(
        infer_year(2, 29, t(12, 0, 0), now, utc()),
        Some(at(2028, 2, 29, 12, 0, 0))
    );
}

#[test]
fn zone_offsets_shift_syslog_times_and_the_year_boundary() {
    // 00:30 on Jan 1 at +02:00 is still Dec 31 in UTC.
    let plus2 = Zone::Fixed(FixedOffset::east_opt(7200).unwrap());
    let now = at(2026, 12, 31, 22, 31, 0);
    assert_eq!(
        infer_year(1, 1, t(0, 30, 0), now, plus2),
        Some(at(2026, 12, 31, 22, 30, 0))
    );
}

#[test]
fn local_zone_is_used_by_default() {
    // Whatever the host's zone, a line stamped "now" in local time comes back as now.
    let now = Utc::now();
    let local = now.with_timezone(&chrono::Local);
    let line = format!("{} host sshd[1]: x", local.format("%b %e %H:%M:%S"));
    let env = split(&line, now, Zone::Local);
    let got = env.ts.unwrap();
    assert!((now - got).num_seconds().abs() <= 1, "{got} vs {now}");
}

#[test]
fn envelopes() {
    let now = at(2026, 11, 21, 12, 0, 0);
    let env = split(
        "2026-11-21T12:00:01.123456+00:00 host sshd[123]: hello: world",
        now,
        utc(),
    );
    assert_eq!(
        env,
        Envelope {
            ts: Some(
                Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 1).unwrap()
                    + chrono::Duration::microseconds(123_456)
            ),
            program: Some("sshd"),
            message: "hello: world",
        }
    );
    let env = split("2026-11-21T12:00:01Z host sshd: hi", now, utc());
    assert_eq!((env.program, env.message), (Some("sshd"), "hi"));
    let env = split("Nov 21 12:00:01 host sshd[1]:", now, utc());
    assert_eq!((env.program, env.message), (Some("sshd"), ""));
    // No recognisable program after a timestamp.
    let env = split("Nov 21 12:00:01 host just some words", now, utc());
    assert_eq!(env.program, None);
    assert!(env.ts.is_some());
    // Bare lines: what `sshd -E` writes, or garbage; both have no time and no program.
    for bare in [
        "Failed password for x from 10.0.0.1 port 1 ssh2",
        "Nov",
        "2026-11-21 not a time",
        "Nov 99 12:00:01 h sshd: x",
    ] {
        let env = split(bare, now, utc());
        assert_eq!(
            (env.ts, env.program, env.message),
            (None, None, bare),
            "{bare}"
        );
    }
}

//! The envelope around a log message: its timestamp and the program that wrote it.
//!
//! Three shapes reach the tailer:
//! - syslog: `Nov 21 12:00:01 host sshd[123]: MSG`, local time with no year (inferred here);
//! - RFC 3339 (rsyslog's default on Debian 12, `journalctl -o short-iso[-precise]`):
//!   `2026-11-21T12:00:01.123456+00:00 host sshd[123]: MSG`;
//! - bare: what `sshd -E FILE` writes itself, just `MSG\r\n` with no time and no program. The caller
//!   stamps those with their arrival time.

use chrono::{
    DateTime, Datelike as _, FixedOffset, Local, LocalResult, NaiveDate, NaiveDateTime, NaiveTime,
    TimeZone, Utc,
};

/// The zone that syslog-format timestamps (which carry no offset) were written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// The host's zone (TZ, /etc/localtime), as rsyslog writes them: the production choice.
    #[default]
    Local,
    /// A fixed offset: tests, and logs shipped from a host in another zone.
    Fixed(FixedOffset),
}

/// A log line split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `None` for bare lines: the caller stamps them on arrival.
    pub ts: Option<DateTime<Utc>>,
    /// The program name without its `[pid]`; `None` for bare lines.
    pub program: Option<&'a str>,
    pub message: &'a str,
}

/// A syslog timestamp may run this far ahead of the reader's clock (skew between writer and reader,
/// or a line read just after a year boundary) before it is taken to be from the previous year.
const FUTURE_SKEW_DAYS: i64 = 2;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Splits `line` into timestamp, program and message. `now` is the reader's clock, used to infer the
/// year of syslog timestamps. A line that starts with neither timestamp shape is bare.
pub fn split(line: &str, now: DateTime<Utc>, zone: Zone) -> Envelope<'_> {
    if let Some((ts, rest)) = rfc3339_prefix(line).or_else(|| syslog_prefix(line, now, zone)) {
        let (program, message) = program_and_message(rest);
        return Envelope {
            ts: Some(ts),
            program,
            message,
        };
    }
    Envelope {
        ts: None,
        program: None,
        message: line,
    }
}

/// `2026-11-21T12:00:01[.frac](+00:00|+0000|Z) rest`.
fn rfc3339_prefix(line: &str) -> Option<(DateTime<Utc>, &str)> {
    let (token, rest) = line.split_once(' ')?;
    // Cheap shape check first: most lines of a syslog-format file are not RFC 3339.
    let b = token.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !b[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ts = DateTime::parse_from_rfc3339(token)
        // journald's short-iso writes the offset without a colon, which RFC 3339 does not allow.
        .or_else(|_| DateTime::parse_from_str(token, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()?;
    Some((ts.with_timezone(&Utc), rest))
}

/// `Nov 21 12:00:01 rest` (the day is space-padded: `Nov  1`).
fn syslog_prefix(line: &str, now: DateTime<Utc>, zone: Zone) -> Option<(DateTime<Utc>, &str)> {
    let month = MONTHS.iter().position(|m| line.starts_with(m))? as u32 + 1;
    let rest = line.get(3..)?.strip_prefix(' ')?.trim_start_matches(' ');
    let (day, rest) = rest.split_once(' ')?;
    let day: u32 = day.parse().ok()?;
    let (clock, rest) = rest.split_once(' ')?;
    let time = NaiveTime::parse_from_str(clock, "%H:%M:%S%.f").ok()?;
    let ts = infer_year(month, day, time, now, zone)?;
    Some((ts, rest))
}

/// Picks the year for a syslog timestamp: the latest of next year, this year and last year (in the
/// writer's zone) that is not more than [`FUTURE_SKEW_DAYS`] ahead of `now`. So "Dec 31" read on
/// Jan 1 is last year's, and "Jan 1 00:00:01" read at Dec 31 23:59:59 (the writer's clock slightly
/// ahead) is next year's. Feb 29 skips years that lack it.
pub fn infer_year(
    month: u32,
    day: u32,
    time: NaiveTime,
    now: DateTime<Utc>,
    zone: Zone,
) -> Option<DateTime<Utc>> {
    let year = match zone {
        Zone::Local => now.with_timezone(&Local).year(),
        Zone::Fixed(offset) => now.with_timezone(&offset).year(),
    };
    let limit = now + chrono::Duration::days(FUTURE_SKEW_DAYS);
    [year + 1, year, year - 1]
        .into_iter()
        .filter_map(|y| NaiveDate::from_ymd_opt(y, month, day))
        .filter_map(|date| to_utc(date.and_time(time), zone))
        .find(|ts| *ts <= limit)
}

fn to_utc(naive: NaiveDateTime, zone: Zone) -> Option<DateTime<Utc>> {
    match zone {
        Zone::Fixed(offset) => offset
            .from_local_datetime(&naive)
            .single()
            .map(|t| t.with_timezone(&Utc)),
        Zone::Local => match Local.from_local_datetime(&naive) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            // The repeated hour after a DST change: either reading is within an hour.
            LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            // A time skipped by DST cannot have been written by a correct clock; keep the event
            // anyway, an hour off at most, rather than dropping a failed login.
            LocalResult::None => Local
                .from_local_datetime(&(naive + chrono::Duration::hours(1)))
                .earliest()
                .map(|t| t.with_timezone(&Utc)),
        },
    }
}

/// After the timestamp: `host prog[pid]: MSG`, or `prog[pid]: MSG` when the writer left out the host
/// (some relays do). A line with a timestamp but no recognisable program keeps `program: None`.
fn program_and_message(rest: &str) -> (Option<&str>, &str) {
    let rest = rest.trim_start_matches(' ');
    if let Some(found) = program_token(rest) {
        return found;
    }
    match rest.split_once(' ') {
        Some((_host, after)) => program_token(after).unwrap_or((None, after)),
        None => (None, rest),
    }
}

/// `prog[pid]: MSG` or `prog: MSG` at the start of `s`.
fn program_token(s: &str) -> Option<(Option<&str>, &str)> {
    let (token, message) = s.split_once(": ").or_else(|| {
        // A message may be empty: "sshd[1]:" at the end of the line.
        s.strip_suffix(':').map(|t| (t, ""))
    })?;
    if token.contains(' ') || token.is_empty() {
        return None;
    }
    let name = match token.split_once('[') {
        Some((name, pid)) => {
            let pid = pid.strip_suffix(']')?;
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            name
        }
        None => token,
    };
    if name.is_empty() {
        return None;
    }
    Some((Some(name), message))
}
